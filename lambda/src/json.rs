//! Typed reads of outside JSON (events, specs, the files of a job folder):
//! the value becomes a serde struct where it enters, and a failure names the
//! field it is about (`data.features`, `record.train.loss`), not only a line
//! and column.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a JSON value did not fit its type: the dotted path of the field
/// (`None` for the value as a whole, e.g. truncated text) and serde's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    pub field: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl JsonError {
    /// The field under `outer` (`spec` + `batch` → `spec.batch`), or `outer` itself.
    pub fn field_in(&self, outer: &str) -> String {
        match &self.field {
            Some(f) => format!("{outer}.{f}"),
            None => outer.to_string(),
        }
    }
}

fn typed(e: serde_path_to_error::Error<serde_json::Error>) -> JsonError {
    let path = e.path().to_string();
    let field = (path != ".").then_some(path);
    JsonError { field, reason: e.into_inner().to_string() }
}

/// Deserialises `T` from a JSON value.
///
/// # Errors
/// [`JsonError`] naming the field that does not fit.
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, JsonError> {
    serde_path_to_error::deserialize(v).map_err(typed)
}

/// Deserialises `T` from JSON text (a file's bytes).
///
/// # Errors
/// [`JsonError`] naming the field that does not fit, or (no field) what is
/// wrong with the text itself.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(typed)?;
    de.end().map_err(|e| JsonError { field: None, reason: e.to_string() })?;
    Ok(value)
}

/// Serialises an `f32` as the shortest decimal that reads back as the same
/// `f32` (`0.9`, not `0.8999999761581421`): specs and events are read by
/// people and written by hand.
///
/// # Errors
/// The serializer's.
pub fn short_f32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(v.to_string().parse::<f64>().unwrap_or(f64::from(*v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
        n: u64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
    }

    #[test]
    fn errors_name_the_field() {
        let e = from_value::<Outer>(&serde_json::json!({"inner": {"name": 3}, "n": 1})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("inner.name"), "{e}");
        assert!(e.to_string().starts_with("inner.name: invalid type: integer `3`"), "{e}");
        let e = from_value::<Outer>(&serde_json::json!({"inner": {"name": "a", "colour": 1}, "n": 1})).unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        assert!(e.field_in("spec").starts_with("spec.inner"), "{e}");
        let e = from_slice::<Outer>(br#"{"inner": {"name": "a"}, "n": "#).unwrap_err();
        assert!(e.field.is_none() || e.field.as_deref() == Some("n"), "{e:?}");
        assert!(e.to_string().contains("EOF"), "{e}");
        let e = from_slice::<Outer>(br#"{"inner": {"name": "a"}, "n": 1} trailing"#).unwrap_err();
        assert!(e.field.is_none() && e.reason.contains("trailing"), "{e:?}");
        assert_eq!(from_slice::<Outer>(br#"{"inner": {"name": "a"}, "n": 1}"#).unwrap().n, 1);
    }

    /// Floats of a spec print as typed and read back to the same bits.
    #[test]
    fn f32_fields_print_short_and_round_trip() {
        #[derive(serde::Serialize, Deserialize)]
        struct F {
            #[serde(serialize_with = "short_f32")]
            x: f32,
        }
        for x in [0.9f32, 5e-4, 3.0, 1e-7, 123456.79, f32::MIN_POSITIVE, -0.1] {
            let text = serde_json::to_string(&F { x }).unwrap();
            assert_eq!(
                text,
                format!("{{\"x\":{}}}", serde_json::to_string(&x.to_string().parse::<f64>().unwrap()).unwrap())
            );
            assert!(text.len() <= 24, "{text}");
            let back: F = from_slice(text.as_bytes()).unwrap();
            assert_eq!(back.x.to_bits(), x.to_bits(), "{text}");
        }
        assert_eq!(serde_json::to_string(&F { x: 0.9 }).unwrap(), r#"{"x":0.9}"#);
    }
}
