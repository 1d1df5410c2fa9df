//! Answer extraction and equivalence checking for math answers.
//!
//! Extraction:
//! - [`last_boxed`]: content of the last `\boxed{..}` / `\fbox{..}` (braces balanced, `\{` `\}` escapes skipped),
//!   or the word after `\boxed ` (`\boxed 5`, up to whitespace or `$`, trailing `.`/`,` dropped). A box nested in
//!   an earlier box's argument does not count as "later": the outer box is the answer. `None` if the last box is
//!   unbalanced or missing. `\boxed` and `\fbox` compete on position (MATH prefers any `\boxed` over `\fbox`).
//! - [`gsm_answer`]: first word after the last `####`, with `,` and `$` removed and a trailing `.` dropped.
//! - [`extract_answer`]: a non-blank last box, else the `####` answer. An empty `\boxed{}` counts as no box.
//!
//! [`normalize`] follows `_strip_string` from MATH's `math_equivalence.py`, in this order: linebreaks -> space,
//! drop `\!`, `\\` -> `\`, `\tfrac`/`\dfrac` -> `\frac`, drop `\left`/`\right`, drop degrees (`^{\circ}`, `^\circ`,
//! `°`), drop `\$` and `$`, cut right units (`5\text{ cm}` -> `5`), unwrap `\text{}` (+ `\textbf`, `\textrm`,
//! `\mbox`, `\boxed`, `\fbox`), drop `\%`/`%`, drop thin spaces `\,` `\;` `\:` and `{,}` -> `,`, strip a short
//! variable (`x = 5` -> `5`), thousands commas in a plain number (`1,234,567` -> `1234567`), `.5` -> `0.5` after
//! start/space/`{([,+-=`, trailing decimal zeros (`2.50` -> `2.5`, `2.0` -> `2`, `5.` -> `5` at the end),
//! `\sqrt3` -> `\sqrt{3}`, `\frac12` -> `\frac{1}{2}`, remove all whitespace, `a/b` of integers -> `\frac{a}{b}`,
//! `(A)` -> `A`. Answers nested deeper than 64 braces skip the recursive `\text` unwrap and `\frac`/`\sqrt`
//! bracing, because a stack overflow would abort the caller's whole process.
//!
//! [`is_equiv`] compares normalized strings, then falls back to numbers: plain integers are compared exactly;
//! otherwise, if both sides are a plain number (optional sign; integer, decimal, `\frac{p}{q}` or `p/q` with plain
//! decimal `p`, `q`), they are equal within relative tolerance 1e-6.
//!
//! Deviations from MATH's `is_equiv`:
//! - `0.5` is not rewritten to `\frac{1}{2}`; the numeric fallback covers it and every other decimal/fraction pair,
//!   so `\frac{2}{4}` ≡ `0.5` ≡ `1/2` (MATH: only the literal `0.5`; `\frac{2}{4}` ≠ `\frac{1}{2}`).
//! - Large integers are compared exactly (`1000000` ≠ `1000001`) although 1e-6 relative tolerance would merge them.
//! - Trailing decimal zeros, thousands commas, thin spaces, `$`, `°`, `\frac{72}1`, `\sqrt 3`, `\sqrt\pi`, `-1/2`
//!   and `x_1 = 4` / `\theta = 4` are normalized (MATH leaves them, or in `\sqrt 3` mangles it to `\sqrt{}3`).
//! - `\left`/`\right` are removed only as whole commands, so `\rightarrow` survives (MATH makes it `arrow`).
//! - `\text{...}` is unwrapped and `(A)` ≡ `A` for a single capital letter: multiple-choice labels match whether or
//!   not the model writes the parentheses. `\text{(A)}` ≡ `(A)` ≡ `A`.
//! - Right units: cut at the first `\text{ ` (or `\mbox{ `) only if something precedes it and the text is not
//!   `and`/`or`; MATH raises (and falls back to raw equality) when `\text{ ` occurs twice.
//! - The `x = 5` rule needs one `=` and a left side that is a variable (`x`, `k1`, `x_1`, `x_{12}`, `\theta`);
//!   MATH takes any left side of at most two characters (`2 = 5` -> `5`).
//! - The numeric fallback also merges decimals within 1e-6 relative (`12` ≡ `12.0000001`); `\frac{1}{0}` is no
//!   number. Linebreaks become spaces (MATH deletes them); `\boxed{5}` given as an answer is unwrapped to `5`.
//! - Units need the space MATH relies on: `5\text{cm}` stays `5cm` ≠ `5`, as in MATH.
//! - No symbolic algebra: `\sqrt{2}` ≠ `1.41421356`, `50\%` ≠ `0.5`, `1e3` ≠ `1000`, `2x` ≠ `x+x`.

/// Relative tolerance for the numeric fallback.
const REL_TOL: f64 = 1e-6;

/// Commands whose braced argument is kept and the wrapper dropped.
const UNWRAP_CMDS: [&str; 6] = ["\\text", "\\textbf", "\\textrm", "\\mbox", "\\boxed", "\\fbox"];

/// Brace nesting beyond which the recursive rewrites are skipped: a stack overflow aborts the whole process, and
/// no real answer nests this deep.
const MAX_DEPTH: usize = 64;

fn max_depth(s: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0);
    for b in s.bytes() {
        match b {
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        max = max.max(depth);
    }
    max
}

/// Byte index just past the `}` matching the `{` at `open`.
fn match_brace(s: &str, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            // Escaped braces (`\{1,2\}`) are set delimiters, not grouping; skipping the byte after `\` also keeps
            // `\\` from escaping a real brace. Only ASCII is matched, so this never splits a UTF-8 character.
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// `s[at..]` starts with the command `cmd` itself, not a longer command such as `\rightarrow` for `\right`.
fn is_cmd_at(s: &str, at: usize, cmd: &str) -> bool {
    s[at..].starts_with(cmd) && !s[at + cmd.len()..].starts_with(|c: char| c.is_ascii_alphabetic())
}

/// One LaTeX macro argument starting at `start` (whitespace skipped): `(content, end, braced)`.
fn read_arg(s: &str, start: usize) -> Option<(&str, usize, bool)> {
    let i = s.len() - s[start..].trim_start().len();
    let rest = &s[i..];
    match rest.chars().next()? {
        '{' => match_brace(s, i).map(|end| (&s[i + 1..end - 1], end, true)),
        '}' => None,
        '\\' => {
            let letters = rest[1..].bytes().take_while(u8::is_ascii_alphabetic).count();
            let len = 1 + if letters > 0 { letters } else { rest[1..].chars().next().map_or(0, char::len_utf8) };
            Some((&rest[..len], i + len, false))
        }
        c => Some((&rest[..c.len_utf8()], i + c.len_utf8(), false)),
    }
}

/// Replace every occurrence of command `cmd`; `f` gets the index after the command name and returns the
/// replacement and where it ends, or `None` to keep the command as written.
fn rewrite(s: &str, cmd: &str, f: impl Fn(usize) -> Option<(String, usize)>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(off) = s[i..].find(cmd) {
        let at = i + off;
        out.push_str(&s[i..at]);
        match if is_cmd_at(s, at, cmd) { f(at + cmd.len()) } else { None } {
            Some((rep, end)) => {
                out.push_str(&rep);
                i = end;
            }
            None => {
                out.push_str(cmd);
                i = at + cmd.len();
            }
        }
    }
    out.push_str(&s[i..]);
    out
}

fn unwrap_text(s: &str) -> String {
    UNWRAP_CMDS.iter().fold(s.to_string(), |acc, cmd| {
        rewrite(&acc, cmd, |j| {
            let (inner, end, braced) = read_arg(&acc, j)?;
            braced.then(|| (unwrap_text(inner), end))
        })
    })
}

/// Brace the first `nargs` arguments of `cmd`: `\frac12` -> `\frac{1}{2}`, `\sqrt 3` -> `\sqrt{3}`.
fn brace_args(s: &str, cmd: &str, nargs: usize) -> String {
    rewrite(s, cmd, |mut j| {
        // `\sqrt[3]{x}` is already explicit LaTeX; bracing `[` would corrupt it.
        if s[j..].trim_start().starts_with('[') {
            return None;
        }
        let mut out = cmd.to_string();
        for _ in 0..nargs {
            let (arg, end, _) = read_arg(s, j)?;
            out.push('{');
            out.push_str(&brace_args(arg, cmd, nargs));
            out.push('}');
            j = end;
        }
        Some((out, j))
    })
}

fn remove_right_units(s: &str) -> String {
    for marker in ["\\text{ ", "\\mbox{ "] {
        if let Some(i) = s.find(marker) {
            let head = s[..i].trim();
            let word = s[i + marker.len()..].split('}').next().unwrap_or("").trim();
            // A leading space in `\text{ ..}` marks units in MATH, except for connectives between two answers.
            if !head.is_empty() && !matches!(word, "and" | "or") {
                return head.to_string();
            }
        }
    }
    s.to_string()
}

fn is_short_var(v: &str) -> bool {
    let alnum = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_alphanumeric);
    match v.as_bytes() {
        [c] => c.is_ascii_alphabetic(),
        [c, d] => c.is_ascii_alphabetic() && d.is_ascii_alphanumeric(),
        [b'\\', name @ ..] => (1..=7).contains(&name.len()) && name.iter().all(u8::is_ascii_alphabetic),
        [c, b'_', b'{', sub @ .., b'}'] | [c, b'_', sub @ ..] => {
            c.is_ascii_alphabetic() && alnum(sub) && sub.len() <= 3
        }
        _ => false,
    }
}

fn strip_variable(s: &str) -> &str {
    match s.split_once('=') {
        Some((lhs, rhs)) if !rhs.contains('=') && is_short_var(lhs.trim()) => rhs.trim(),
        _ => s,
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `1,234,567.5` -> `1234567.5`; anything else (`1,2`, `(1,000)`) may be a tuple and is left alone.
fn strip_thousands(s: &str) -> Option<String> {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').map_or((body, None), |(i, f)| (i, Some(f)));
    let groups: Vec<&str> = int.split(',').collect();
    let ok = groups.len() > 1
        && groups[0].len() <= 3
        && groups[1..].iter().all(|g| g.len() == 3)
        && groups.iter().all(|g| is_digits(g))
        && frac.is_none_or(is_digits);
    ok.then(|| s.replace(',', ""))
}

/// Canonical spelling of a run of digits and dots; `prev` is the character before it, `at_end` whether it ends `s`.
fn fix_number_run(run: &str, prev: Option<char>, at_end: bool) -> String {
    let mut run = run.to_string();
    if run.len() > 1 && run.starts_with('.') && run.as_bytes()[1].is_ascii_digit() {
        // Not after letters or `)`: `\cdot.5` or `f(x).5` are not decimals missing their zero.
        if prev.is_none_or(|p| " {([,+-=".contains(p)) {
            run.insert(0, '0');
        }
    }
    let (int, frac) = run.split_once('.').unwrap_or((&run, "-"));
    if is_digits(int) && (is_digits(frac) || (frac.is_empty() && at_end)) {
        let frac = frac.trim_end_matches('0');
        return if frac.is_empty() { int.to_string() } else { format!("{int}.{frac}") };
    }
    run
}

fn fix_numbers(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    let mut i = 0;
    while let Some(c) = s[i..].chars().next() {
        if c.is_ascii_digit() || c == '.' {
            let end = i + s[i..].bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
            out.push_str(&fix_number_run(&s[i..end], s[..i].chars().next_back(), end == s.len()));
            i = end;
        } else {
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Content of the last `\boxed{...}` / `\fbox{...}` (or the word after `\boxed `); see the module docs.
pub fn last_boxed(text: &str) -> Option<String> {
    let mut starts: Vec<(usize, usize)> = ["\\boxed", "\\fbox"]
        .iter()
        .flat_map(|k| text.match_indices(k).filter(|(i, _)| is_cmd_at(text, *i, k)).map(|(i, k)| (i, i + k.len())))
        .collect();
    starts.sort_unstable();
    let mut last = None;
    let mut cursor = 0;
    for (start, after) in starts {
        if start < cursor {
            continue;
        }
        last = boxed_arg(text, after);
        if let Some((_, end)) = last {
            cursor = end;
        }
    }
    last.map(|(content, _)| content.to_string())
}

fn boxed_arg(text: &str, after: usize) -> Option<(&str, usize)> {
    let i = text.len() - text[after..].trim_start().len();
    if text[i..].starts_with('{') {
        let end = match_brace(text, i)?;
        return Some((&text[i + 1..end - 1], end));
    }
    // `\boxed 5`: LaTeX would take one token, but models use it for a whole word ending the math (`$`).
    let len = text[i..].find(|c: char| c.is_whitespace() || c == '$').unwrap_or(text.len() - i);
    let word = text[i..i + len].trim_end_matches(['.', ',']);
    (!word.is_empty()).then_some((word, i + len))
}

/// The GSM8K answer: first word after the last `####`, without `,`, `$` and a trailing `.`.
pub fn gsm_answer(text: &str) -> Option<String> {
    let idx = text.rfind("####")?;
    let line = text[idx + 4..].lines().next().unwrap_or("");
    let cleaned: String = line.chars().filter(|c| !matches!(c, ',' | '$')).collect();
    let word = cleaned.split_whitespace().next()?.trim_end_matches('.');
    (!word.is_empty()).then(|| word.to_string())
}

/// A non-blank last boxed answer, else the `####` answer.
pub fn extract_answer(text: &str) -> Option<String> {
    last_boxed(text).filter(|b| !b.trim().is_empty()).or_else(|| gsm_answer(text))
}

/// MATH-style normalisation; see the module docs for the rules and their order.
pub fn normalize(answer: &str) -> String {
    let mut s = answer.replace(['\n', '\r'], " ").replace("\\!", "").replace("\\\\", "\\");
    s = s.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac");
    for cmd in ["\\left", "\\right"] {
        s = rewrite(&s, cmd, |j| Some((String::new(), j)));
    }
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace('°', "");
    s = s.replace("\\$", "").replace('$', "");
    let shallow = max_depth(&s) <= MAX_DEPTH;
    s = remove_right_units(&s);
    if shallow {
        s = unwrap_text(&s);
    }
    s = s.replace("\\%", "").replace('%', "");
    s = s.replace("\\,", "").replace("\\;", "").replace("\\:", "").replace("{,}", ",");
    let s = strip_variable(s.trim()).to_string();
    let s = strip_thousands(&s).unwrap_or(s);
    let s = fix_numbers(&s);
    let s = if shallow { brace_args(&brace_args(&s, "\\sqrt", 1), "\\frac", 2) } else { s };
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let (sign, body) = s.strip_prefix('-').map_or(("", s.as_str()), |b| ("-", b));
    let (a, b) = body.split_once('/').unwrap_or(("", ""));
    if is_digits(a) && is_digits(b) {
        return format!("{sign}\\frac{{{a}}}{{{b}}}");
    }
    match s.as_bytes() {
        [b'(', c, b')'] if c.is_ascii_uppercase() => (*c as char).to_string(),
        _ => s,
    }
}

fn split_sign(s: &str) -> (bool, &str) {
    match s.strip_prefix('-') {
        Some(body) => (true, body),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    }
}

/// Unsigned `123`, `1.5`, `.5` or `5.`; the digit check keeps `inf`, `NaN` and `1e3` out of `f64::from_str`.
fn decimal(s: &str) -> Option<f64> {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let dots = s.bytes().filter(|&b| b == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != s.len() {
        return None;
    }
    s.parse().ok()
}

fn ratio(p: &str, q: &str) -> Option<f64> {
    let (neg, p) = split_sign(p);
    let (p, q) = (decimal(p)?, decimal(q)?);
    (q != 0.0).then_some(if neg { -p / q } else { p / q })
}

fn numeric_value(s: &str) -> Option<f64> {
    let (neg, body) = split_sign(s);
    let v = if let Some(inner) = body.strip_prefix("\\frac{") {
        let (p, q) = inner.strip_suffix('}')?.split_once("}{")?;
        ratio(p, q)?
    } else if let Some((p, q)) = body.split_once('/') {
        ratio(p, q)?
    } else {
        decimal(body)?
    };
    Some(if neg { -v } else { v })
}

/// Sign and digits without leading zeros, so integers too large for `f64` still compare exactly.
fn integer_key(s: &str) -> Option<String> {
    let (neg, body) = split_sign(s);
    if !is_digits(body) {
        return None;
    }
    let digits = body.trim_start_matches('0');
    Some(match (neg, digits) {
        (_, "") => "0".to_string(),
        (true, d) => format!("-{d}"),
        (false, d) => d.to_string(),
    })
}

/// Equal after [`normalize`], or the same plain number (see the module docs).
pub fn is_equiv(a: &str, b: &str) -> bool {
    let (a, b) = (normalize(a), normalize(b));
    if a == b {
        return true;
    }
    if let (Some(x), Some(y)) = (integer_key(&a), integer_key(&b)) {
        return x == y;
    }
    match (numeric_value(&a), numeric_value(&b)) {
        (Some(x), Some(y)) => (x - y).abs() <= REL_TOL * x.abs().max(y.abs()),
        _ => false,
    }
}

/// Whether the answer extracted from `generated` matches `reference` (itself boxed/`####` or a bare answer).
pub fn is_correct(generated: &str, reference: &str) -> bool {
    let Some(pred) = extract_answer(generated) else {
        return false;
    };
    let reference = extract_answer(reference).unwrap_or_else(|| reference.to_string());
    // A blank reference would otherwise match a prediction that normalizes to nothing (e.g. `\boxed{\$}`).
    !normalize(&reference).is_empty() && is_equiv(&pred, &reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rustfmt::skip]
    const EQUIV: &[(&str, &str, bool)] = &[
        // identity, variables
        ("5", "5", true), ("x = 5", "5", true), ("k=3", "3", true), ("x_1 = 4", "4", true),
        ("\\theta = \\frac\\pi2", "\\frac{\\pi}{2}", true), ("y=2x+1", "2x+1", true), ("2x = 4", "4", false),
        ("x = y = 3", "3", false),
        // fracs and sqrt
        ("\\frac12", "\\frac{1}{2}", true), ("\\dfrac{1}{2}", "\\frac{1}{2}", true), ("\\tfrac34", "\\frac{3}{4}", true),
        ("\\frac 1 2", "\\frac{1}{2}", true), ("\\frac{72}1", "72", true), ("\\frac1{\\sqrt2}", "\\frac{1}{\\sqrt{2}}", true),
        ("\\sqrt3", "\\sqrt{3}", true), ("\\sqrt 3", "\\sqrt{3}", true), ("2\\sqrt2", "2\\sqrt{2}", true),
        ("\\sqrt[3]{2}", "\\sqrt[3]{2}", true), ("\\sqrt{2}", "\\sqrt{3}", false), ("\\sqrt{2}", "1.41421356", false),
        // a/b and numeric fallback
        ("1/2", "\\frac{1}{2}", true), ("0.5", "\\frac{1}{2}", true), ("0.5", "1/2", true), ("\\frac{2}{4}", "0.5", true),
        ("-\\frac{1}{2}", "-0.5", true), ("\\frac{-1}{2}", "-0.5", true), ("-1/2", "-\\frac12", true),
        ("-\\frac{1}{2}", "0.5", false), ("\\frac{1}{2}", "\\frac{1}{3}", false), ("\\frac{1}{3}", "0.3333333", true),
        ("\\frac{1}{0}", "0", false), ("1e3", "1000", false), ("0.5", "0.05", false),
        // decimals, signs, integers
        (".5", "0.5", true), ("-.5", "-0.5", true), ("\\frac{.5}{2}", "\\frac{0.5}{2}", true), ("2.0", "2", true),
        ("2.50", "2.5", true), ("5.", "5", true), ("1000000.00", "1000000", true), ("+5", "5", true),
        ("-7", "-7", true), ("-5", "5", false), ("007", "7", true), ("1000000", "1000001", false),
        ("2.5", "25", false), ("10", "100", false), ("\\cdot.5", "\\cdot0.5", false),
        // thousands commas vs tuples
        ("1,000", "1000", true), ("1,234,567", "1234567", true), ("-1,000.50", "-1000.5", true),
        ("1{,}000", "1000", true), ("1\\,000", "1000", true), ("(1,2)", "12", false), ("1,2", "12", false),
        ("1,23", "123", false), ("(1,000)", "(1000)", false),
        // money, percent, degrees, units, text
        ("\\$1,000.00", "1000", true), ("$5$", "5", true), ("50\\%", "50", true), ("50%", "50", true),
        ("50\\%", "0.5", false), ("30^\\circ", "30", true), ("30^{\\circ}", "30", true), ("30°", "30", true),
        ("5 \\text{ cm}", "5", true), ("10\\text{ inches}^2", "10", true), ("\\mbox{ cm}", "cm", true),
        ("3\\text{ and }4", "3", false), ("\\text{Tuesday}", "Tuesday", true), ("\\text{(A)}", "(A)", true),
        ("\\textbf{(C)}", "C", true), ("(A)", "A", true), ("(A)", "(B)", false), ("A", "B", false),
        ("\\boxed{5}", "5", true),
        // whitespace, linebreaks, \! \left \right
        ("3\n", "3", true), ("\\!5", "5", true), ("\\left( 1, 2 \\right)", "(1,2)", true), ("\\rightarrow", "arrow", false),
        ("\\left\\{1, 2\\right\\}", "\\{1,2\\}", true),
        // intervals, tuples, infinity, matrices
        ("(1, 2)", "(1,2)", true), ("[1, 2)", "[1,2)", true), ("(1,2)", "[1,2)", false), ("[1,2)", "[1,2]", false),
        ("(-\\infty, 3]", "(-\\infty,3]", true), ("\\infty", "-\\infty", false), ("x^2", "x^3", false),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", true),
        ("3", "", false), ("", "", true),
    ];

    #[test]
    fn equivalence_table() {
        assert!(EQUIV.len() >= 60);
        let bad: Vec<_> = EQUIV
            .iter()
            .filter(|(a, b, want)| is_equiv(a, b) != *want || is_equiv(b, a) != *want)
            .map(|(a, b, want)| format!("{a:?} vs {b:?}: want {want}, got {:?} / {:?}", normalize(a), normalize(b)))
            .collect();
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    #[test]
    fn boxed_extraction() {
        let b = |s: &str| last_boxed(s);
        assert_eq!(b("so $\\boxed{\\frac{1}{\\sqrt{2}}}$."), Some("\\frac{1}{\\sqrt{2}}".into()));
        assert_eq!(b("\\boxed{1} then \\boxed{2}"), Some("2".into()));
        assert_eq!(b("\\boxed{1"), None);
        assert_eq!(b("\\boxed{2} and \\boxed{1"), None);
        assert_eq!(b("\\boxed{}"), Some(String::new()));
        assert_eq!(b("\\boxed{x=3}"), Some("x=3".into()));
        assert_eq!(b("answer $\\boxed 5$."), Some("5".into()));
        assert_eq!(b("answer \\boxed 5."), Some("5".into()));
        assert_eq!(b("\\fbox{7}"), Some("7".into()));
        assert_eq!(b("\\boxed{1} \\fbox{7}"), Some("7".into()));
        assert_eq!(b("\\boxed{\\{1,2\\}}"), Some("\\{1,2\\}".into()));
        assert_eq!(b("\\boxed{\\boxed{3}}"), Some("\\boxed{3}".into()));
        assert_eq!(b("\\boxedfoo{3}"), None);
        assert_eq!(b("no box"), None);
        assert_eq!(b("\\boxed"), None);
    }

    #[test]
    fn gsm_extraction() {
        assert_eq!(gsm_answer("so 5+5=10\n#### 10"), Some("10".into()));
        assert_eq!(gsm_answer("#### 1,000."), Some("1000".into()));
        assert_eq!(gsm_answer("#### $1,234,567 dollars"), Some("1234567".into()));
        assert_eq!(gsm_answer("#### 3\n#### -4\n"), Some("-4".into()));
        assert_eq!(gsm_answer("#### "), None);
        assert_eq!(gsm_answer("no marker 5"), None);
    }

    #[test]
    fn answer_extraction() {
        assert_eq!(extract_answer("#### 4 and \\boxed{5}"), Some("5".into()));
        assert_eq!(extract_answer("\\boxed{} #### 4"), Some("4".into()));
        assert_eq!(extract_answer("\\boxed{1 #### 4"), Some("4".into()));
        assert_eq!(extract_answer("\\boxed{}"), None);
        assert_eq!(extract_answer("the answer is 5"), None);
    }

    #[test]
    fn correctness() {
        assert!(is_correct("Thus $x = \\boxed{\\dfrac12}$.", "0.5"));
        assert!(is_correct("... #### 1,000.", "#### 1000"));
        assert!(is_correct("\\boxed{x=3}", "The solution gives $\\boxed{3}$."));
        assert!(is_correct("\\boxed{\\text{(A)}}", "A"));
        assert!(is_correct("\\boxed{-0.5}", "-\\frac{1}{2}"));
        assert!(is_correct("\\boxed{50\\%}", "50"));
        assert!(!is_correct("the answer is 5", "5"));
        assert!(!is_correct("\\boxed{}", "5"));
        assert!(!is_correct("\\boxed{1", "1"));
        assert!(!is_correct("\\boxed{4}", "5"));
        assert!(!is_correct("\\boxed{\\$}", ""));
    }

    #[test]
    fn normalize_examples() {
        assert_eq!(normalize("\\frac12"), "\\frac{1}{2}");
        assert_eq!(normalize("0.5"), "0.5");
        assert_eq!(normalize("2.50"), "2.5");
        assert_eq!(normalize("1,234,567"), "1234567");
        assert_eq!(normalize("(1, 2)"), "(1,2)");
        assert_eq!(normalize("x\\rightarrow\\infty"), "x\\rightarrow\\infty");
        assert_eq!(normalize("\\sqrt\\pi"), "\\sqrt{\\pi}");
        assert_eq!(normalize("-3/4"), "-\\frac{3}{4}");
        assert_eq!(normalize("\\text{(B)}"), "B");
        let deep = format!("{}1{}", "\\frac{\\text{".repeat(5000), "}}{2}".repeat(5000));
        assert!(is_equiv(&deep, &deep));
        let ok = format!("{}\\frac12{}", "\\sqrt{".repeat(MAX_DEPTH - 1), "}".repeat(MAX_DEPTH - 1));
        assert!(normalize(&ok).contains("\\frac{1}{2}"));
    }
}
