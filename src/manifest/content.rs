//! An origin file as hashing reads it: holes found with SEEK_DATA and never read, reads
//! paced, and the hashing abandoned once the file is deleted or the reader must stop.

use std::io;
use std::ops::Range;

use crate::origin::OriginFile;

use super::chunks::Content;

/// Every this many chunks, hashing looks whether the file still has a name.
const GONE_EVERY: u64 = 64;

/// An open origin file, read for hashing.
pub struct FileContent<'a> {
    file: &'a OriginFile,
    /// A range known to hold no data: `start..end` asked with SEEK_DATA.
    no_data: Range<u64>,
    pace: Option<&'a mut dyn FnMut(u64)>,
    stop: Option<&'a dyn Fn() -> bool>,
    chunks: u64,
}

impl<'a> FileContent<'a> {
    /// `file`, read as it is.
    pub fn new(file: &'a OriginFile) -> FileContent<'a> {
        FileContent {
            file,
            no_data: 0..0,
            pace: None,
            stop: None,
            chunks: 0,
        }
    }

    /// Calls `pace` with each read's length before it is made (to keep to a rate).
    pub fn paced(mut self, pace: &'a mut dyn FnMut(u64)) -> FileContent<'a> {
        self.pace = Some(pace);
        self
    }

    /// Abandons the hashing (ErrorKind::Interrupted) once `stop` says so.
    pub fn stopping_when(mut self, stop: &'a dyn Fn() -> bool) -> FileContent<'a> {
        self.stop = Some(stop);
        self
    }
}

impl Content for FileContent<'_> {
    fn read_at(&mut self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        if let Some(pace) = self.pace.as_mut() {
            pace(buffer.len() as u64);
        }
        self.file.read_at(buffer, offset)
    }

    fn is_hole(&mut self, range: Range<u64>) -> io::Result<bool> {
        if self.no_data.start <= range.start && range.end <= self.no_data.end {
            return Ok(true);
        }
        match self.file.next_data(range.start) {
            Ok(Some(data)) => {
                self.no_data = range.start..data;
                Ok(data >= range.end)
            }
            // No data from here to the end.
            Ok(None) => {
                self.no_data = range.start..u64::MAX;
                Ok(true)
            }
            // A filesystem that cannot tell: read it.
            Err(_) => Ok(false),
        }
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        if self.stop.is_some_and(|stop| stop()) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "hashing stopped",
            ));
        }
        self.chunks += 1;
        if self.chunks % GONE_EVERY == 0 && self.file.stat()?.nlink == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "deleted while it was hashed",
            ));
        }
        Ok(())
    }
}
