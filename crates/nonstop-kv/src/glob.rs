//! Redis's glob patterns (`KEYS`, `SCAN ... MATCH`, `PSUBSCRIBE`).

/// Whether `text` matches Redis's glob `pattern`: `*` any run, `?` any byte, `[abc]`, `[^a]`
/// and `[a-z]` classes, `\\` escaping the next byte. Matched with one backtracking point (the
/// last `*`), so a pattern of many stars costs at most pattern x text steps, where a recursive
/// matcher's time explodes (Redis fixed the same in 7.0.9, CVE-2022-36021).
pub(crate) fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    glob(pattern, text).0
}

/// [`glob_matches`], and the steps it took.
fn glob(pattern: &[u8], text: &[u8]) -> (bool, usize) {
    let (mut p, mut t, mut steps) = (0, 0, 0);
    // Where to resume after the last `*`: the pattern after it, and the text it has eaten to.
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        steps += 1;
        if pattern.get(p) == Some(&b'*') {
            p += 1;
            resume = Some((p, t));
            continue;
        }
        if let Some(next) = one(pattern, p, text[t]) {
            p = next;
            t += 1;
            continue;
        }
        match resume {
            Some((after_star, eaten)) => {
                p = after_star;
                t = eaten + 1;
                resume = Some((after_star, eaten + 1));
            }
            None => return (false, steps),
        }
    }
    (pattern[p.min(pattern.len())..].iter().all(|&b| b == b'*'), steps)
}

/// Matches `byte` against the one-byte token of `pattern` at `p` (a literal, `?`, a class or an
/// escape); the index after the token if it matches.
fn one(pattern: &[u8], p: usize, byte: u8) -> Option<usize> {
    match *pattern.get(p)? {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == byte).then_some(p + 2),
        b'[' => {
            let mut at = p + 1;
            let negated = pattern.get(at) == Some(&b'^');
            if negated {
                at += 1;
            }
            let mut matched = false;
            while at < pattern.len() && pattern[at] != b']' {
                if pattern[at] == b'\\' && at + 1 < pattern.len() {
                    matched |= pattern[at + 1] == byte;
                    at += 2;
                } else if at + 2 < pattern.len() && pattern[at + 1] == b'-' && pattern[at + 2] != b']' {
                    let (low, high) = (pattern[at].min(pattern[at + 2]), pattern[at].max(pattern[at + 2]));
                    matched |= (low..=high).contains(&byte);
                    at += 3;
                } else {
                    matched |= pattern[at] == byte;
                    at += 1;
                }
            }
            // An unclosed class runs to the pattern's end, as in Redis.
            (matched != negated).then_some((at + 1).min(pattern.len()))
        }
        literal => (literal == byte).then_some(p + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_redis_matches_them() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("user:*:name", "user:42:name", true),
            ("[abc", "a", true),
            ("a*", "a", true),
            ("*a", "ba", true),
            ("**b**", "aab", true),
            ("*?", "", false),
        ];
        for (pattern, text, matches) in cases {
            assert_eq!(glob_matches(pattern.as_bytes(), text.as_bytes()), *matches, "{pattern} on {text}");
        }
        // Many stars against a long key that almost matches: steps bounded by pattern x text,
        // where a recursive matcher's would explode.
        let (pattern, text) = ("*a".repeat(30) + "b", "a".repeat(5000));
        let (matched, steps) = glob(pattern.as_bytes(), text.as_bytes());
        assert!(!matched);
        assert!(steps <= (pattern.len() + 1) * (text.len() + 1), "{steps} steps");
    }
}
