//! torchrun's spellings of the flags whose values are more than a number: `--nproc-per-node
//! gpu|cpu|auto|N`, `--nnodes N` (and why `MIN:MAX` is refused), `--rdzv-endpoint HOST[:PORT]`,
//! `--rdzv-backend`, and the per-rank stream maps of `--redirects` / `--tee` (`0:1,1:2`).

use std::collections::BTreeMap;

/// `--nproc-per-node`: a count, or what torchrun derives one from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nproc {
    Count(usize),
    /// One per visible GPU (an error when there is none).
    Gpu,
    /// One per CPU core.
    Cpu,
    /// One per visible GPU, else one per core.
    Auto,
}

pub fn parse_nproc(text: &str) -> Result<Nproc, String> {
    match text {
        "gpu" => Ok(Nproc::Gpu),
        "cpu" => Ok(Nproc::Cpu),
        "auto" => Ok(Nproc::Auto),
        n => match n.parse::<usize>() {
            Ok(0) => Err("must be at least 1".into()),
            Ok(n) => Ok(Nproc::Count(n)),
            Err(_) => Err("expected a number of processes, gpu, cpu or auto".into()),
        },
    }
}

impl Nproc {
    /// The number of processes, given the GPUs this node shows.
    pub fn resolve(self, visible_gpus: usize) -> Result<usize, String> {
        let cores = || std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        match self {
            Nproc::Count(n) => Ok(n),
            Nproc::Gpu if visible_gpus == 0 => {
                Err("--nproc-per-node gpu: no GPU is visible on this node (CUDA_VISIBLE_DEVICES, nvidia-smi)".into())
            }
            Nproc::Gpu => Ok(visible_gpus),
            Nproc::Cpu => Ok(cores()),
            Nproc::Auto => Ok(if visible_gpus > 0 { visible_gpus } else { cores() }),
        }
    }
}

/// GPUs this node shows its workers: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`'s list
/// (the launcher does not link CUDA).
pub fn visible_gpus() -> usize {
    if let Ok(visible) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return visible.split(',').filter(|d| !d.trim().is_empty() && d.trim() != "-1").count();
    }
    match std::process::Command::new("nvidia-smi").arg("-L").output() {
        Ok(out) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("GPU ")).count()
        }
        _ => 0,
    }
}

/// `--nnodes N`, or `N:N`. An elastic range is refused: the launcher starts a fixed group.
pub fn parse_nnodes(text: &str) -> Result<usize, String> {
    let count = |t: &str| t.trim().parse::<usize>().map_err(|_| format!("`{t}` is not a number of nodes"));
    match text.split_once(':') {
        None => count(text),
        Some((min, max)) if count(min)? == count(max)? => count(min),
        Some((min, max)) => Err(format!(
            "{min}:{max} is an elastic range, and fomaml-launch is not elastic: it starts a fixed group of nodes and \
             restarts all of them together (--max-restarts); give one number, the same on every node"
        )),
    }
}

/// `--rdzv-endpoint`: node 0's address, and the store's port when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: Option<u16>,
}

/// `--rdzv-endpoint HOST[:PORT]` (`[v6]:PORT` for IPv6).
pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    parse_host_port(text).map(|(host, port)| Endpoint { host, port })
}

fn parse_host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let port = |p: &str| p.parse::<u16>().map(Some).map_err(|_| format!("`{p}` is not a port"));
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("an IPv6 address needs its closing `]`")?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host.to_string(), port(p)?)),
            None if after.is_empty() => Ok((host.to_string(), None)),
            None => Err(format!("unexpected `{after}` after the address")),
        };
    }
    match text.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => Ok((host.to_string(), port(p)?)),
        _ if text.is_empty() => Err("give HOST or HOST:PORT".into()),
        _ => Ok((text.to_string(), None)),
    }
}

/// `--rdzv-backend`: static and c10d are what this launcher does (node 0 hosts a TCP store).
pub fn parse_backend(text: &str) -> Result<String, String> {
    match text {
        "static" | "c10d" => Ok(text.to_string()),
        other => Err(format!(
            "the `{other}` rendezvous is not supported: node 0's launcher hosts a TCP store, as torchrun's c10d and \
             static backends do (use c10d, or leave it out)"
        )),
    }
}

/// Which streams go to the log files (`--redirects`, `--tee`): 0 none, 1 stdout, 2 stderr, 3 both;
/// one value for every rank, or a value per local rank (`0:1,1:2`; ranks not named get 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Streams {
    all: u8,
    per_rank: BTreeMap<usize, u8>,
}

impl Streams {
    pub fn for_rank(&self, local_rank: usize) -> u8 {
        self.per_rank.get(&local_rank).copied().unwrap_or(self.all)
    }

    pub fn any(&self) -> bool {
        self.all != 0 || self.per_rank.values().any(|m| *m != 0)
    }
}

pub fn parse_streams(text: &str) -> Result<Streams, String> {
    let mode = |t: &str| match t.trim().parse::<u8>() {
        Ok(m) if m <= 3 => Ok(m),
        _ => Err(format!("`{t}` is not a stream mode: 0 none, 1 stdout, 2 stderr, 3 both")),
    };
    if !text.contains(':') {
        return Ok(Streams { all: mode(text)?, per_rank: BTreeMap::new() });
    }
    let mut per_rank = BTreeMap::new();
    for pair in text.split(',') {
        let (rank, m) = pair.split_once(':').ok_or_else(|| format!("`{pair}`: expected LOCAL_RANK:MODE"))?;
        let rank = rank.trim().parse::<usize>().map_err(|_| format!("`{rank}` is not a local rank"))?;
        per_rank.insert(rank, mode(m)?);
    }
    Ok(Streams { all: 0, per_rank })
}

/// `--local-ranks-filter 0,2`: the local ranks whose output reaches the console (log files get
/// every rank's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankFilter(pub Vec<usize>);

pub fn parse_ranks(text: &str) -> Result<RankFilter, String> {
    let ranks = text.split(',').map(|r| r.trim().parse::<usize>().map_err(|_| format!("`{r}` is not a local rank")));
    ranks.collect::<Result<_, _>>().map(RankFilter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchruns_values_parse_or_say_why_not() {
        assert_eq!(parse_nproc("4"), Ok(Nproc::Count(4)));
        assert_eq!(parse_nproc("gpu").unwrap().resolve(8), Ok(8));
        assert!(parse_nproc("gpu").unwrap().resolve(0).unwrap_err().contains("no GPU is visible"));
        assert_eq!(parse_nproc("auto").unwrap().resolve(2), Ok(2));
        assert!(parse_nproc("auto").unwrap().resolve(0).unwrap() >= 1);
        assert!(parse_nproc("0").is_err() && parse_nproc("many").is_err());

        assert_eq!((parse_nnodes("2"), parse_nnodes("3:3")), (Ok(2), Ok(3)));
        assert!(parse_nnodes("1:4").unwrap_err().contains("not elastic"));

        assert_eq!(parse_endpoint("n1:29400"), Ok(Endpoint { host: "n1".into(), port: Some(29400) }));
        assert_eq!(parse_endpoint("n1"), Ok(Endpoint { host: "n1".into(), port: None }));
        assert_eq!(parse_endpoint("[::1]:5"), Ok(Endpoint { host: "::1".into(), port: Some(5) }));
        assert!(parse_endpoint("n1:port").is_err());

        assert!(parse_backend("c10d").is_ok() && parse_backend("etcd").unwrap_err().contains("not supported"));

        let s = parse_streams("0:1,2:3").unwrap();
        assert_eq!((s.for_rank(0), s.for_rank(1), s.for_rank(2)), (1, 0, 3));
        assert_eq!(parse_streams("2").unwrap().for_rank(5), 2);
        assert!(parse_streams("4").is_err() && parse_streams("0:x").is_err());
        assert_eq!(parse_ranks("0, 2"), Ok(RankFilter(vec![0, 2])));
    }
}
