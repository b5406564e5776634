//! Generated text cut at stop strings, as it streams: text that may be the start of a stop
//! string is held back until it is known not to be.

/// Stop strings, and the streamed text held back for them.
#[derive(Debug, Clone, Default)]
pub struct StopText {
    stop: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopText {
    /// Empty strings are ignored.
    pub fn new(stop: &[String]) -> Self {
        StopText { stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(), ..StopText::default() }
    }

    /// Whether a stop string has been reached; nothing more is returned after it.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds decoded `text`; returns the text now safe to emit, cut before a stop string.
    pub fn push(&mut self, text: &str) -> Option<String> {
        if self.stopped {
            return None;
        }
        self.held.push_str(text);
        if let Some(at) = self.stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            self.held.truncate(at);
            return self.finish();
        }
        // Hold back the longest tail that could still grow into a stop string.
        let keep = self.stop.iter().map(|s| partial_match(&self.held, s)).max().unwrap_or(0);
        let ready = self.held.len() - keep;
        (ready > 0).then(|| {
            let rest = self.held.split_off(ready);
            std::mem::replace(&mut self.held, rest)
        })
    }

    /// The text still held back, at the end of generation.
    pub fn finish(&mut self) -> Option<String> {
        (!self.held.is_empty()).then(|| std::mem::take(&mut self.held))
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on char boundaries.
fn partial_match(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && stop.is_char_boundary(n) && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_stop_matches() {
        assert_eq!(partial_match("hello\n\n", "\n\nEND"), 2);
        assert_eq!(partial_match("hello", "lo!"), 2);
        assert_eq!(partial_match("hello", "xyz"), 0);
        assert_eq!(partial_match("caf\u{e9}", "\u{e9}t\u{e9}"), 2);
        assert_eq!(partial_match("", "abc"), 0);
    }

    #[test]
    fn text_is_cut_before_a_stop_string_spanning_pieces() {
        let mut stop = StopText::new(&["END".into(), String::new()]);
        let mut out = String::new();
        for piece in ["he", "llo E", "N", "D more"] {
            out.extend(stop.push(piece));
        }
        assert!(stop.stopped());
        assert_eq!(out, "hello ");
        assert_eq!(stop.push("after"), None);
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        let mut stop = StopText::new(&["\n\n".into()]);
        assert_eq!(stop.push("line\n").as_deref(), Some("line"));
        assert_eq!(stop.finish().as_deref(), Some("\n"));
    }
}
