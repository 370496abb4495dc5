//! The rewrite policies (`--policy`) and site selection (`--layers`),
//! parsed from their command-line spelling.

use std::collections::HashSet;

use crate::bail;
use crate::error::Result;

/// The `--policy` spelling of [`Policy::Exact`], the default.
pub const EXACT: &str = "exact";

/// How sites are replaced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// Identical semantics; recognised windows become attributes.
    #[default]
    Exact,
    /// Sliding window `(left, right)` on every layer except each `global_every`-th
    /// (layer `i` is global when `i % global_every == 0`), plus `globals` global tokens.
    Window {
        /// Keys before the query.
        left: i64,
        /// Keys after the query.
        right: i64,
        /// Every N-th layer keeps full attention (0 = none).
        global_every: usize,
        /// Global tokens.
        globals: i64,
    },
    /// DSA-like: every eligible site becomes `ai.tessera.TopKAttention` in its
    /// training-free mode (each query tile keeps the `k` keys, in blocks of
    /// 64, whose block summaries bound the scores highest), plus the last
    /// `window` keys before each query and the first `globals` keys.
    TopK {
        /// Keys kept per query.
        k: i64,
        /// Local window always kept (`None` = the op's default).
        window: Option<i64>,
        /// Sink tokens always kept.
        globals: i64,
    },
}

impl std::fmt::Display for Policy {
    /// The policy as `--policy` spells it (parses back to the same value).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact => f.write_str(EXACT),
            Self::Window {
                left,
                right,
                global_every,
                globals,
            } => {
                write!(f, "window={left},{right}")?;
                if *global_every > 0 {
                    write!(f, ",global-every={global_every}")?;
                }
                if *globals > 0 {
                    write!(f, ",globals={globals}")?;
                }
                Ok(())
            }
            Self::TopK { k, window, globals } => {
                write!(f, "topk={k}")?;
                if let Some(w) = window {
                    write!(f, ",window={w}")?;
                }
                if *globals > 0 {
                    write!(f, ",globals={globals}")?;
                }
                Ok(())
            }
        }
    }
}

impl Policy {
    /// Under a window policy, whether layer `layer` keeps full attention
    /// (every `global_every`-th layer, counting from 0).
    pub fn is_global_layer(&self, layer: usize) -> bool {
        matches!(self, Self::Window { global_every, .. } if *global_every > 0 && layer % global_every == 0)
    }

    /// What the policy did to the site on layer `layer`, for the summary:
    /// the policy itself, or that a window policy left the layer global.
    pub fn as_applied(&self, layer: usize) -> String {
        if self.is_global_layer(layer) {
            format!("{self}: global layer, full attention")
        } else {
            self.to_string()
        }
    }

    /// Parse `exact`, `window=L,R[,global-every=N][,globals=G]` or
    /// `topk=K[,window=L][,globals=G]`.
    pub fn parse(s: &str) -> Result<Self> {
        if s == EXACT {
            return Ok(Self::Exact);
        }
        if let Some(rest) = s.strip_prefix("topk=") {
            return Self::parse_topk(s, rest);
        }
        let Some(rest) = s.strip_prefix("window=") else {
            bail!("--policy '{s}': expected 'exact', 'window=L,R[,global-every=N][,globals=G]' or 'topk=K[,window=L][,globals=G]'");
        };
        Self::parse_window(s, rest)
    }

    /// `topk=K[,window=L][,globals=G]` (`rest` follows `topk=` in `s`).
    fn parse_topk(s: &str, rest: &str) -> Result<Self> {
        let mut parts = rest.split(',');
        let k = at_least(s, parts.next().unwrap_or(""), "top_k", 1)?;
        let (mut window, mut globals) = (None, 0i64);
        for p in parts {
            if let Some(w) = p.strip_prefix("window=") {
                window = Some(at_least(s, w, "window", 0)?);
            } else if let Some(g) = p.strip_prefix("globals=") {
                globals = at_least(s, g, "globals", 0)?;
            } else {
                bail!("--policy '{s}': unknown part '{p}' (expected window=L or globals=G)");
            }
        }
        Ok(Self::TopK { k, window, globals })
    }

    /// `window=L,R[,global-every=N][,globals=G]` (`rest` follows `window=` in `s`).
    fn parse_window(s: &str, rest: &str) -> Result<Self> {
        let parts: Vec<&str> = rest.split(',').collect();
        if parts.len() < 2 {
            bail!("--policy '{s}': window needs L,R");
        }
        let (left, right) = (
            at_least(s, parts[0], "L", -1)?,
            at_least(s, parts[1], "R", -1)?,
        );
        let (mut global_every, mut globals) = (0usize, 0i64);
        for p in &parts[2..] {
            if let Some(n) = p.strip_prefix("global-every=") {
                global_every = at_least(s, n, "global-every", -1)?.max(0) as usize;
            } else if let Some(g) = p.strip_prefix("globals=") {
                globals = at_least(s, g, "globals", -1)?.max(0);
            } else {
                bail!("--policy '{s}': unknown part '{p}' (expected global-every=N or globals=G)");
            }
        }
        Ok(Self::Window {
            left,
            right,
            global_every,
            globals,
        })
    }
}

/// The integer `v` (a part of the policy `s`) when it is at least `min`.
fn at_least(s: &str, v: &str, what: &str, min: i64) -> Result<i64> {
    match v.trim().parse::<i64>() {
        Ok(n) if n >= min => Ok(n),
        _ => bail!("--policy '{s}': {what} must be an integer >= {min} (got '{v}')"),
    }
}

/// Parse `--layers 0,2,5-7` into a set of site ordinals.
pub fn parse_layers(s: &str) -> Result<HashSet<usize>> {
    let mut out = HashSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let bad = || crate::error::Error(format!("--layers '{s}': '{part}' is not N or N-M"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().map_err(|_| bad())?);
            }
        }
    }
    Ok(out)
}
