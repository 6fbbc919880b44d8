//! Reading request lines with a bound: a line longer than the limit is skipped to its end
//! (without holding it) and reported, so one oversized message cannot exhaust memory or stop
//! the connection.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One line read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line, without its `\n` (or `\r\n`).
    Text(Vec<u8>),
    /// A line over the limit, skipped; its length.
    TooLong(usize),
}

/// The next line, or `None` at end of input (a last line without `\n` still counts).
pub async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut skipped = 0usize;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (line.is_empty(), skipped) {
                (true, 0) => None,
                (_, 0) => Some(Line::Text(trim(line))),
                (_, n) => Some(Line::TooLong(n)),
            });
        }
        let (chunk, done) = match memchr(available) {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        let consumed = done.unwrap_or(chunk.len());
        if skipped > 0 || line.len() + chunk.len() > max {
            skipped += line.len() + chunk.len();
            line = Vec::new();
        } else {
            line.extend_from_slice(chunk);
        }
        reader.consume(consumed);
        if done.is_some() {
            return Ok(Some(if skipped > 0 {
                Line::TooLong(skipped)
            } else {
                Line::Text(trim(line))
            }));
        }
    }
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

fn trim(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_skipped_and_the_next_is_read() {
        let input = format!("short\n{}\r\nafter\nlast", "x".repeat(100));
        let mut reader = tokio::io::BufReader::with_capacity(16, input.as_bytes());
        let mut out = Vec::new();
        while let Some(line) = next_line(&mut reader, 50).await.unwrap() {
            out.push(line);
        }
        assert_eq!(
            out,
            vec![
                Line::Text(b"short".to_vec()),
                Line::TooLong(101),
                Line::Text(b"after".to_vec()),
                Line::Text(b"last".to_vec()),
            ]
        );
    }
}
