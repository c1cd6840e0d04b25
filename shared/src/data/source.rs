//! Opening input files for streaming: local paths or `s3://` URIs, plain or gzip.
//!
//! Every reader here is line-oriented and bounded in memory: one line at a time is held,
//! never the whole file. Errors name the file and the line.

use crate::store::{Location, S3Settings};
use flate2::read::MultiGzDecoder;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// A data file could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{file}: {message}")]
    Open { file: String, message: String },
    #[error("{file}: line {line}: {message}")]
    Line {
        file: String,
        line: u64,
        message: String,
    },
    #[error("{file}: the file is empty")]
    Empty { file: String },
}

/// Reads a text file line by line, tracking the line number for error messages.
pub struct LineReader {
    name: String,
    inner: Box<dyn BufRead + Send>,
    line_no: u64,
    buf: String,
}

impl fmt::Debug for LineReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineReader")
            .field("name", &self.name)
            .field("line_no", &self.line_no)
            .finish()
    }
}

impl LineReader {
    /// Wraps any reader; gzip is detected from the magic bytes, not from the file name.
    pub fn new(
        name: impl Into<String>,
        reader: impl Read + Send + 'static,
    ) -> Result<Self, SourceError> {
        let name = name.into();
        let mut buffered = BufReader::with_capacity(256 * 1024, reader);
        let head = buffered.fill_buf().map_err(|e| SourceError::Open {
            file: name.clone(),
            message: e.to_string(),
        })?;
        if head.is_empty() {
            return Err(SourceError::Empty { file: name });
        }
        let inner: Box<dyn BufRead + Send> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(BufReader::with_capacity(
                256 * 1024,
                MultiGzDecoder::new(buffered),
            ))
        } else {
            Box::new(buffered)
        };
        Ok(Self {
            name,
            inner,
            line_no: 0,
            buf: String::new(),
        })
    }

    /// Opens a local file.
    pub fn open_path(path: &Path) -> Result<Self, SourceError> {
        let file = std::fs::File::open(path).map_err(|e| SourceError::Open {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::new(path.display().to_string(), file)
    }

    /// Opens a local path or an `s3://` object. S3 objects are streamed, not downloaded whole;
    /// this must run on a blocking thread inside a Tokio runtime.
    pub fn open(location: &Location, s3: &S3Settings) -> Result<Self, SourceError> {
        match location {
            Location::Local(path) => Self::open_path(path),
            Location::S3 { .. } => {
                let name = location.to_string();
                let reader =
                    crate::store::s3::blocking_object_reader(location, s3).map_err(|e| {
                        SourceError::Open {
                            file: name.clone(),
                            message: format!("{e:#}"),
                        }
                    })?;
                Self::new(name, reader)
            }
        }
    }

    /// The file's name as shown in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of the line most recently returned (1-based).
    pub fn line_no(&self) -> u64 {
        self.line_no
    }

    /// The next line without its line ending, or `None` at the end of the file.
    pub fn next_line(&mut self) -> Result<Option<&str>, SourceError> {
        self.buf.clear();
        let read = self.inner.read_line(&mut self.buf).map_err(|e| {
            let message = if e.kind() == std::io::ErrorKind::InvalidData {
                "not valid UTF-8 text".to_string()
            } else {
                e.to_string()
            };
            SourceError::Line {
                file: self.name.clone(),
                line: self.line_no + 1,
                message,
            }
        })?;
        if read == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        let line = self.buf.trim_end_matches(['\n', '\r']);
        Ok(Some(line))
    }

    /// An error about the current line.
    pub fn error(&self, message: impl Into<String>) -> SourceError {
        SourceError::Line {
            file: self.name.clone(),
            line: self.line_no,
            message: message.into(),
        }
    }
}

/// In-memory readers for the format readers' tests.
#[cfg(test)]
pub(crate) mod test_readers {
    use super::LineReader;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    pub fn reader(name: &str, text: &str) -> LineReader {
        LineReader::new(name, std::io::Cursor::new(text.as_bytes().to_vec())).unwrap()
    }

    pub fn gz_reader(name: &str, text: &str) -> LineReader {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        LineReader::new(name, std::io::Cursor::new(gz.finish().unwrap())).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    fn lines(reader: &mut LineReader) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            out.push(line.to_string());
        }
        out
    }

    #[test]
    fn reads_plain_and_gzip_alike() {
        let text = "a\r\nb\n\nc";
        let mut plain =
            LineReader::new("plain", std::io::Cursor::new(text.as_bytes().to_vec())).unwrap();
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        let mut zipped =
            LineReader::new("zipped", std::io::Cursor::new(gz.finish().unwrap())).unwrap();
        let expected = vec!["a", "b", "", "c"];
        assert_eq!(lines(&mut plain), expected);
        assert_eq!(lines(&mut zipped), expected);
        assert_eq!(zipped.line_no(), 4);
    }

    #[test]
    fn empty_file_is_a_clear_error() {
        let err = LineReader::new("empty.json", std::io::Cursor::new(Vec::new())).unwrap_err();
        assert_eq!(err.to_string(), "empty.json: the file is empty");
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let bytes = b"ok\n\xff\xfe\n".to_vec();
        let mut reader = LineReader::new("bad.json", std::io::Cursor::new(bytes)).unwrap();
        reader.next_line().unwrap();
        let err = reader.next_line().unwrap_err();
        assert_eq!(err.to_string(), "bad.json: line 2: not valid UTF-8 text");
    }
}
