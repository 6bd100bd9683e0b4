//! Where a value is in a YAML document: the decoder only reports a position when it fails,
//! so these probes walk to the value and fail there on purpose.

use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// The value of a mapping key.
    Key(String),
    /// An element of a sequence.
    Index(usize),
}

/// Marker error text of the location probes.
const PROBE: &str = "location probe";

/// Fails on purpose at the first event of the value it is asked to decode, so the
/// decoder's error carries that value's line and column.
pub struct LocateProbe;

impl<'de> Deserialize<'de> for LocateProbe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProbeVisitor;

        impl<'de> Visitor<'de> for ProbeVisitor {
            type Value = LocateProbe;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(PROBE)
            }
            // Every `visit_*` keeps its default, which fails inside the value's own
            // `deserialize_any`, where the decoder knows the value's position.
        }

        deserializer.deserialize_any(ProbeVisitor)
    }
}

/// Walks `path` and fails at the value it leads to (or where the walk stops, when the
/// document does not have that path). Decoding with it always fails; the error's
/// location is the answer.
pub struct PathProbe<'p>(pub &'p [Segment]);

impl<'de> DeserializeSeed<'de> for PathProbe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.0.split_first() {
            None => LocateProbe::deserialize(deserializer).map(|_| ()),
            Some((Segment::Key(key), rest)) => deserializer.deserialize_map(KeyWalk { key, rest }),
            Some((Segment::Index(index), rest)) => deserializer.deserialize_seq(IndexWalk {
                index: *index,
                rest,
            }),
        }
    }
}

struct KeyWalk<'p> {
    key: &'p str,
    rest: &'p [Segment],
}

impl<'de> Visitor<'de> for KeyWalk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == self.key {
                return map.next_value_seed(PathProbe(self.rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

struct IndexWalk<'p> {
    index: usize,
    rest: &'p [Segment],
}

impl<'de> Visitor<'de> for IndexWalk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for _ in 0..self.index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(PathProbe(self.rest)).map(|_| ())
    }
}

/// `path` in the decoder's notation (`spec.template.spec.domain.devices.disks[1].nmae`)
/// as segments; `None` for text that is not such a path.
pub fn parse_path(path: &str) -> Option<Vec<Segment>> {
    let mut segments = Vec::new();
    for part in path.split('.') {
        let (key, mut indexes) = match part.find('[') {
            Some(start) => (&part[..start], &part[start..]),
            None => (part, ""),
        };
        if key.is_empty() {
            return None;
        }
        segments.push(Segment::Key(key.to_string()));
        while let Some(rest) = indexes.strip_prefix('[') {
            let end = rest.find(']')?;
            segments.push(Segment::Index(rest[..end].parse().ok()?));
            indexes = &rest[end + 1..];
        }
        if !indexes.is_empty() {
            return None;
        }
    }
    Some(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
a: 1
b:
  c:
    - x: 1
    - x: 2
      y: 3
";

    fn line_and_column(path: &str) -> Option<(usize, usize)> {
        let segments = parse_path(path).unwrap();
        let document = serde_norway::Deserializer::from_str(DOC);
        let error = PathProbe(&segments).deserialize(document).unwrap_err();
        error.location().map(|l| (l.line(), l.column()))
    }

    #[test]
    fn paths_parse_into_keys_and_indexes() {
        assert_eq!(
            parse_path("b.c[1].y"),
            Some(vec![
                Segment::Key("b".into()),
                Segment::Key("c".into()),
                Segment::Index(1),
                Segment::Key("y".into()),
            ])
        );
        assert_eq!(parse_path("a[x]"), None);
        assert_eq!(parse_path("a..b"), None);
        assert_eq!(parse_path("a[1]b"), None);
    }

    #[test]
    fn the_probe_fails_at_the_value_the_path_leads_to() {
        assert_eq!(line_and_column("a"), Some((1, 4)));
        assert_eq!(line_and_column("b.c[1].y"), Some((6, 10)));
        assert_eq!(line_and_column("b.c[0].x"), Some((4, 10)));
    }
}
