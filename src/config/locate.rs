//! Key path -> line and column: where `upstreams.api.breaker.jitter` or
//! `routes[2].upstream` stands in the config text, found by walking the text
//! key by key, and where a YAML comment starts on a line (which `env` needs
//! too: `${NAME}` in a comment is not expanded).
//!
//! Best effort and text only: must not parse YAML or decide whether a
//! value is valid; an error always carries its key path, the position is
//! extra.

/// Best-effort 1-based (line, column) of a dotted key path such as
/// `upstreams.api.breaker.jitter` or `routes[2].upstream`, found by walking
/// the text key by key. Errors always carry the key path anyway.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut line = 0usize;
    let mut col = 0usize;
    let mut found = false;
    for seg in split_path(path) {
        match seg {
            Seg::Key(key) => {
                let (l, c) = find_key(&lines, line, col, key)?;
                line = l;
                col = c;
                found = true;
            }
            Seg::Index(i) => {
                // A flow sequence on the key's own line: `key: [a, b]`.
                if found {
                    if let Some(c) = flow_item(lines[line], col, i) {
                        col = c;
                        continue;
                    }
                }
                // The i-th `-` item at the indentation of the first one,
                // within the block of the key (not in a later section).
                let parent = found.then(|| lines[line].len() - lines[line].trim_start().len());
                let mut seen = 0;
                let mut indent = None;
                let mut hit = None;
                for (n, l) in lines.iter().enumerate().skip(line + 1) {
                    let trimmed = l.trim_start();
                    if trimmed.is_empty() || trimmed.starts_with('#') {
                        continue;
                    }
                    let ind = l.len() - trimmed.len();
                    if !trimmed.starts_with('-') {
                        if indent.or(parent).is_some_and(|i| ind <= i) {
                            break;
                        }
                        continue;
                    }
                    match indent {
                        None => indent = Some(ind),
                        Some(i) if i != ind => continue,
                        _ => {}
                    }
                    if seen == i {
                        hit = Some((n, ind));
                        break;
                    }
                    seen += 1;
                }
                let (l, c) = hit?;
                line = l;
                col = c + 1;
                found = true;
            }
        }
    }
    found.then_some((line + 1, col + 1))
}

/// For a flow sequence (`key: [a, b]`) after the key at `key_col` on
/// `line`: the 0-based column of item `i`, or the key's when the item is not
/// on that line. None when the value is not a flow sequence.
fn flow_item(line: &str, key_col: usize, i: usize) -> Option<usize> {
    let rest = line.get(key_col..)?;
    let colon = rest.find(':')?;
    let after = &rest[colon + 1..];
    let open = key_col + colon + 1 + (after.len() - after.trim_start().len());
    if !line[open..].starts_with('[') {
        return None;
    }
    let (mut depth, mut seen, mut quote) = (0usize, 0usize, None::<u8>);
    for (at, &b) in line.as_bytes().iter().enumerate().skip(open) {
        if let Some(q) = quote {
            if b == q {
                quote = None;
            }
            continue;
        }
        match b {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => {
                seen += 1;
                continue;
            }
            _ => {}
        }
        if b == b'"' || b == b'\'' {
            quote = Some(b);
        }
        if depth == 1 && seen == i && !matches!(b, b' ' | b'[') {
            return Some(at);
        }
    }
    Some(key_col)
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(Seg::Key(&rest[..b]));
            }
            rest = &rest[b..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                if let Ok(i) = stripped[..end].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &stripped[end + 1..];
            }
        } else {
            out.push(Seg::Key(rest));
        }
    }
    out
}

fn find_key(lines: &[&str], from_line: usize, from_col: usize, key: &str) -> Option<(usize, usize)> {
    for (n, l) in lines.iter().enumerate().skip(from_line) {
        let start = if n == from_line { from_col } else { 0 };
        let code = &l[..comment_start(l).unwrap_or(l.len())];
        let mut search = start.min(code.len());
        while let Some(pos) = code[search..].find(key) {
            let at = search + pos;
            let before_ok = at == 0 || matches!(code.as_bytes()[at - 1], b' ' | b'{' | b',' | b'"' | b'\'' | b'-');
            let after = code[at + key.len()..].trim_start_matches(['"', '\'']).trim_start();
            if before_ok && after.starts_with(':') {
                return Some((n, at));
            }
            search = at + key.len();
        }
    }
    None
}

/// Where a YAML comment starts on `line`: a `#` outside quotes, first on
/// the line or after white space.
pub fn comment_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let (mut single, mut double) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_walks_nested_keys() {
        let text = "upstreams:\n  a:\n    endpoints: [http://x:1]\n    breaker:\n      jitter: 2\nroutes:\n  - { match: { pathPrefix: / }, upstream: a }\n  - { upstream: b }\n";
        assert_eq!(locate(text, "upstreams.a.breaker.jitter"), Some((5, 7)));
        assert_eq!(locate(text, "routes[1].upstream"), Some((8, 7)));
        assert_eq!(locate(text, "upstreams.a.endpoints[0]"), Some((3, 17)));
        let flow = "upstreams:\n  a:\n    endpoints: [http://x:1, \"b, c\", bad]\nroutes:\n  - { upstream: a }\n  - { upstream: a }\n";
        assert_eq!(locate(flow, "upstreams.a.endpoints[2]"), Some((3, 37)));
        assert_eq!(locate(flow, "upstreams.a.endpoints[5]"), Some((3, 5)), "off the end: the key");
    }
}
