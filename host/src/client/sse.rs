//! An incremental `text/event-stream` parser for `wopbox run --watch`.
//!
//! Bytes arrive in arbitrary chunks; frames come out when their blank line does. The server is
//! ours, but the stream may cross proxies, so a line is bounded ([`MAX_LINE`]) rather than
//! buffered without limit.

/// Longest line accepted (an event's JSON fits well inside; anything larger is not ours).
pub const MAX_LINE: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an event-stream line exceeds {MAX_LINE} bytes")]
    LineTooLong,
    #[error("the event stream is not UTF-8")]
    NotUtf8,
}

#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl Parser {
    /// Feed one chunk; returns the frames it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Frame>, SseError> {
        self.buf.extend_from_slice(chunk);
        let mut frames = Vec::new();
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
            if let Some(f) = self.line(&line) {
                frames.push(f);
            }
        }
        if self.buf.len() > MAX_LINE {
            return Err(SseError::LineTooLong);
        }
        Ok(frames)
    }

    /// One line of the stream (https://html.spec.whatwg.org/multipage/server-sent-events.html
    /// §"Interpreting an event stream"): a blank line dispatches the frame being built.
    fn line(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            let data = self.data.take();
            let (id, event) = (self.id.take(), self.event.take());
            // A block without data (only a comment, or only an id) dispatches nothing.
            return data.map(|data| Frame { id, event, data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                let d = self.data.get_or_insert_with(String::new);
                if !d.is_empty() {
                    d.push('\n');
                }
                d.push_str(value);
            }
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks_and_comments_skipped() {
        let mut p = Parser::default();
        assert!(p
            .push(b": keepalive\n\nid: 3\nevent: run.st")
            .unwrap()
            .is_empty());
        let f = p.push(b"arted\ndata: {\"a\":\r\ndata: 1}\n\n").unwrap();
        assert_eq!(
            f,
            vec![Frame {
                id: Some("3".into()),
                event: Some("run.started".into()),
                data: "{\"a\":\n1}".into()
            }]
        );
        // Fields do not leak into the next frame.
        let f = p.push(b"data:x\n\n").unwrap();
        assert_eq!(f[0].id, None);
        assert_eq!(f[0].event, None);
        assert_eq!(f[0].data, "x");
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = Parser::default();
        let big = vec![b'a'; MAX_LINE + 1];
        assert_eq!(p.push(&big), Err(SseError::LineTooLong));
    }
}
