//! Line-by-line reading shared by the qrels and run readers.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::EvalError;

/// Calls `f(line_number, line)` for every non-blank line of `path`.
///
/// Line numbers are 1-based and count blank lines too. A UTF-8 byte order mark
/// at the start and a trailing `\r` on each line are removed. A line that is
/// not valid UTF-8 is an error naming that line. A file of zero bytes or of
/// blank lines only is an [`EvalError::Empty`].
pub(crate) fn for_each_line<F>(path: &Path, mut f: F) -> Result<(), EvalError>
where
    F: FnMut(usize, &str) -> Result<(), EvalError>,
{
    let file = File::open(path).map_err(|e| EvalError::open(path, e))?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(EvalError::Io {
            path: path.to_path_buf(),
            action: "cannot read",
            source: std::io::Error::other("is a directory, expected a file"),
        });
    }
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut non_blank = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| EvalError::Io {
                path: path.to_path_buf(),
                action: "cannot read",
                source: e,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let mut bytes: &[u8] = &buf;
        if line_no == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let line = std::str::from_utf8(bytes).map_err(|e| EvalError::InvalidUtf8 {
            path: path.to_path_buf(),
            line: line_no,
            offset: e.valid_up_to(),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        non_blank += 1;
        f(line_no, line)?;
    }
    if non_blank == 0 {
        return Err(EvalError::Empty {
            path: path.to_path_buf(),
            what: if line_no == 0 {
                "file is empty".to_string()
            } else {
                "file contains only blank lines".to_string()
            },
        });
    }
    Ok(())
}

/// Quotes a field for an error message, shortening very long values.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let short: String = s.chars().take(MAX).collect();
        format!("{short:?}...")
    }
}
