//! Judging multiple-choice answers. An item is multiple choice when its reference answer is a
//! single letter; the options are the lettered lines its prompt lists (`(A) text`, `A. text`,
//! `A) text`, `A: text`, consecutive from A). A prediction names an option by its letter, bare or
//! written `(B)`, `B.`, `B)`, `\text{B}`, `B) its text`, or by the option's text itself; all of these
//! are the same answer.
//!
//! The prediction is the boxed (or `####`) answer. Where the prompt lists options and nothing is
//! boxed, it is what follows the last "answer is" / "answer:", else the whole output when it is one
//! line. Every other item is judged by [`answer::is_correct`].

use super::answer::{self, extract_answer};

/// Whether `generated` answers the item whose prompt is `prompt` and reference `reference`.
pub fn judge(prompt: &str, generated: &str, reference: &str) -> bool {
    let options = options(prompt);
    let reference_answer = extract_answer(reference).unwrap_or_else(|| reference.trim().to_string());
    let Some(gold) = letter_alone(&reference_answer) else {
        return answer::is_correct(generated, reference);
    };
    if !options.is_empty() && !options.iter().any(|(l, _)| *l == gold) {
        return answer::is_correct(generated, reference);
    }
    prediction(generated, !options.is_empty()).and_then(|p| chosen_letter(&p, &options)) == Some(gold)
}

/// The lettered options the prompt lists (the last such block), as (letter, text).
pub fn options(prompt: &str) -> Vec<(char, String)> {
    let mut blocks: Vec<Vec<(char, String)>> = Vec::new();
    let mut current: Vec<(char, String)> = Vec::new();
    for line in prompt.lines() {
        let expected = (b'A' + current.len() as u8) as char;
        match option_line(line.trim()) {
            Some((letter, text)) if letter == expected && current.len() < 26 => current.push((letter, text)),
            Some((letter, text)) if letter == 'A' => {
                blocks.push(std::mem::take(&mut current));
                current.push((letter, text));
            }
            _ => blocks.push(std::mem::take(&mut current)),
        }
    }
    blocks.push(current);
    blocks.into_iter().rev().find(|b| b.len() >= 2).unwrap_or_default()
}

/// `(A) text`, `A. text`, `A) text` or `A: text`.
fn option_line(line: &str) -> Option<(char, String)> {
    let (letter, rest) = leading_label(line)?;
    let text = rest.trim();
    (!text.is_empty()).then(|| (letter, text.to_string()))
}

/// A capital letter label at the start: `(B)`, `B.`, `B)`, `B:`; and what follows it.
fn leading_label(s: &str) -> Option<(char, &str)> {
    let b = s.as_bytes();
    match b {
        [b'(', l, b')', ..] if l.is_ascii_uppercase() => Some((*l as char, &s[3..])),
        [l, b'.' | b')' | b':', rest @ ..] if l.is_ascii_uppercase() && rest.first().is_none_or(|c| *c == b' ') => {
            Some((*l as char, &s[2..]))
        }
        _ => None,
    }
}

/// A lone letter, however it is wrapped: `B`, `(B)`, `\text{B}`, `B.`.
fn letter_alone(s: &str) -> Option<char> {
    let s = answer::normalize(s.trim().trim_end_matches(['.', ',', ';']));
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_uppercase() => Some(c),
        _ => None,
    }
}

/// The model's final answer, as the module docs describe.
fn prediction(generated: &str, has_options: bool) -> Option<String> {
    if let Some(boxed) = extract_answer(generated) {
        return Some(boxed);
    }
    if !has_options {
        return None;
    }
    let lower = generated.to_lowercase();
    let after = ["answer is", "answer:"].iter().filter_map(|k| lower.rfind(k).map(|i| i + k.len())).max();
    if let Some(start) = after {
        // `to_lowercase` keeps byte offsets for the ASCII keys found, but not always for the rest.
        if generated.is_char_boundary(start) && lower.len() == generated.len() {
            let line = generated[start..].lines().next().unwrap_or("").trim();
            return (!line.is_empty()).then(|| line.to_string());
        }
    }
    let whole = generated.trim();
    (!whole.is_empty() && !whole.contains('\n')).then(|| whole.to_string())
}

/// The option `answer` names, by letter or by text.
fn chosen_letter(answer: &str, options: &[(char, String)]) -> Option<char> {
    let in_options = |l: char| options.is_empty() || options.iter().any(|(o, _)| *o == l);
    if let Some(letter) = letter_alone(answer).filter(|l| in_options(*l)) {
        return Some(letter);
    }
    let trimmed = answer.trim().trim_start_matches(':').trim();
    if let Some((letter, rest)) = leading_label(trimmed) {
        let named = options.iter().find(|(l, _)| *l == letter);
        if named.is_some_and(|(_, text)| same_text(text, rest)) || (rest.trim().is_empty() && in_options(letter)) {
            return Some(letter);
        }
    }
    options.iter().find(|(_, text)| same_text(text, trimmed)).map(|(l, _)| *l)
}

/// The same option text: case, spacing, a final period and `\text{}` aside, or the same number.
fn same_text(option: &str, answer: &str) -> bool {
    let plain = |s: &str| -> String {
        let s = answer::normalize(s.trim().trim_end_matches('.'));
        s.to_lowercase()
    };
    let (a, b) = (plain(option), plain(answer));
    !a.is_empty() && (a == b || answer::is_equiv(option, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "Which is a metal?\n\nContext: Metals conduct.\n\nOptions:\n(A) wood\n(B) copper\n(C) glass, clear\n(D) 12.5\n\nAnswer with the letter of the correct option within \\boxed{}.";

    #[rustfmt::skip]
    const CASES: &[(&str, &str, bool)] = &[
        // the letter, however written
        ("\\boxed{B}", "\\boxed{B}", true), ("Copper conducts.\n\\boxed{(B)}", "\\boxed{B}", true),
        ("\\boxed{\\text{B}}", "\\boxed{B}", true), ("\\boxed{B.}", "\\boxed{B}", true), ("B", "\\boxed{B}", true),
        ("(B)", "\\boxed{B}", true), ("B.", "\\boxed{B}", true), ("The answer is (B).", "\\boxed{B}", true),
        ("Answer: B", "\\boxed{B}", true), ("the answer is B) copper", "\\boxed{B}", true),
        // the option's text
        ("\\boxed{copper}", "\\boxed{B}", true), ("\\boxed{Copper.}", "\\boxed{B}", true),
        ("The answer is copper.", "\\boxed{B}", true), ("copper", "\\boxed{B}", true),
        ("\\boxed{glass, clear}", "\\boxed{C}", true), ("\\boxed{12.50}", "\\boxed{D}", true),
        // wrong or unanswered
        ("\\boxed{A}", "\\boxed{B}", false), ("\\boxed{wood}", "\\boxed{B}", false), ("\\boxed{E}", "\\boxed{B}", false),
        ("\\boxed{B) wood}", "\\boxed{B}", false), ("I think it conducts.\nMaybe.", "\\boxed{B}", false),
        ("\\boxed{}", "\\boxed{B}", false), ("", "\\boxed{B}", false), ("\\boxed{copper wire}", "\\boxed{B}", false),
        // the reference by letter in any spelling
        ("\\boxed{B}", "(B)", true), ("copper", "B", true),
    ];

    #[test]
    fn multiple_choice_table() {
        for (generated, reference, expected) in CASES {
            assert_eq!(judge(PROMPT, generated, reference), *expected, "{generated:?} vs {reference:?}");
        }
    }

    #[test]
    fn options_are_the_last_lettered_block() {
        let prompt = "A. first block\nB. gone\n\nQuestion?\nA) one\nB) two\nC) three\nnot an option";
        let letters: Vec<char> = options(prompt).iter().map(|(l, _)| *l).collect();
        assert_eq!(letters, ['A', 'B', 'C']);
        assert_eq!(options(prompt)[1].1, "two");
        assert!(options("A. only one").is_empty(), "one line is no option list");
        assert!(options("Bob said hi.\nA. x\nC. y").is_empty(), "letters must follow on");
    }

    #[test]
    fn items_without_a_letter_reference_are_judged_as_math() {
        assert!(judge(PROMPT, "\\boxed{12.5}", "\\boxed{12.50}"));
        assert!(judge("What is 2+3?", "so \\boxed{5}", "#### 5"));
        // A letter answer without listed options: only a final (boxed) answer counts.
        assert!(judge("Which point is the centre?", "\\boxed{(C)}", "\\boxed{C}"));
        assert!(!judge("Which point is the centre?", "It is C", "\\boxed{C}"));
    }
}
