//! Reading an error's cause chain.
//!
//! tonic's transport and status errors say little themselves ("transport error"); the
//! useful part (connection refused, no such file) sits at the end of their chain.

use std::error::Error;
use std::io;

/// The first [`io::Error`] in the cause chain of `error`, `error` itself included.
pub fn first_io_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&'a (dyn Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

/// Text of the last error in the cause chain of `error`, if it has a source at all.
pub fn innermost_cause(error: &(dyn Error + 'static)) -> Option<String> {
    let mut last = error.source()?;
    while let Some(next) = last.source() {
        last = next;
    }
    Some(last.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with an optional source, to build chains.
    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Link {
        text: &'static str,
        #[source]
        source: Option<Box<dyn Error + Send + Sync + 'static>>,
    }

    fn chain() -> Link {
        Link {
            text: "transport error",
            source: Some(Box::new(Link {
                text: "dial failed",
                source: Some(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused))),
            })),
        }
    }

    #[test]
    fn finds_the_io_error_deep_in_the_chain() {
        let error = chain();
        let io = first_io_error(&error).map(io::Error::kind);
        assert_eq!(io, Some(io::ErrorKind::ConnectionRefused));
    }

    #[test]
    fn an_io_error_is_its_own_first_io_error() {
        let error = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(
            first_io_error(&error).map(io::Error::kind),
            Some(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn innermost_cause_is_the_end_of_the_chain() {
        let error = chain();
        assert_eq!(
            innermost_cause(&error),
            Some(io::Error::from(io::ErrorKind::ConnectionRefused).to_string())
        );
    }

    #[test]
    fn an_error_without_source_has_no_cause() {
        let error = Link {
            text: "alone",
            source: None,
        };
        assert_eq!(innermost_cause(&error), None);
        assert!(first_io_error(&error).is_none());
    }
}
