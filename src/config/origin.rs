//! Where each key of a loaded config was written (file and line), so that errors found after
//! loading point at the line to fix.

use std::collections::HashMap;

/// The file a config was read from and the line of each key in it. Not part of the config's value:
/// two configs with the same keys are equal wherever they came from.
#[derive(Debug, Clone, Default)]
pub struct KeyOrigins {
    pub(super) source: String,
    pub(super) lines: HashMap<String, u64>,
}

impl PartialEq for KeyOrigins {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl KeyOrigins {
    /// `file:line` of `key`, or of its closest section in the file (a key not in the file has the
    /// default), or just the file.
    pub(super) fn place_of(&self, key: &str) -> String {
        let place = Place { source: &self.source };
        let mut probe = key;
        loop {
            if let Some(line) = self.lines.get(probe) {
                return place.at(*line);
            }
            match probe.rfind('.') {
                Some(cut) => probe = &probe[..cut],
                None => return place.at(0),
            }
        }
    }
}

/// Where errors point: the file name and, when known, the line.
pub(super) struct Place<'a> {
    pub(super) source: &'a str,
}

impl Place<'_> {
    pub(super) fn at(&self, line: u64) -> String {
        if line > 0 {
            format!("{}:{}", self.source, line)
        } else {
            self.source.to_owned()
        }
    }
}
