//! A request's options: from the query string (`?boxes=10,20,110,120&flip_test=1`), from a
//! multipart form's text fields of the same names, or from its `options` part, a JSON object
//! (`{"boxes": [[10, 20, 110, 120]], "flip_test": true}`). Each option may be given once.

use super::errors::ApiError;
use super::state::Model;
use crate::config::DecodeMode;
use crate::detect::DetectorOptions;
use crate::eval::TestOptions;
use crate::predict::FaceBox;

/// The option names (query keys, form fields, JSON keys).
pub const OPTION_NAMES: &[&str] = &["boxes", "flip_test", "decode", "min_face", "detector"];

/// What a request asks for; unset options take the server's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestOptions {
    /// Face boxes x1, y1, x2, y2 in pixels (then no detector runs).
    pub boxes: Option<Vec<FaceBox>>,
    pub flip_test: Option<bool>,
    pub decode: Option<DecodeMode>,
    /// The detector's smallest face, pixels.
    pub min_face: Option<f32>,
    /// Faces from MTCNN (true) or the whole image (false) when no boxes are given.
    pub detector: Option<bool>,
}

/// How one request's faces are found, and its test-time options.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub faces: FacesFrom,
    pub test: TestOptions,
}

#[derive(Clone, Debug)]
pub enum FacesFrom {
    Boxes(Vec<FaceBox>),
    Detector(DetectorOptions),
    WholeImage,
}

fn bad(key: &str, value: &str, expected: &str) -> ApiError {
    ApiError::bad_request(format!("option {key}={value:?}: expected {expected}"))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(key, value, "true or false")),
    }
}

fn parse_box(key: &str, text: &str) -> Result<FaceBox, ApiError> {
    let expected = "boxes x1,y1,x2,y2 in pixels, separated by ';'";
    let v: Vec<f64> = text
        .split(',')
        .map(|t| t.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad(key, text, expected))?;
    match v[..] {
        [x1, y1, x2, y2] => {
            FaceBox::new(x1, y1, x2, y2).map_err(|e| ApiError::bad_request(format!("option {key}: box {text:?}: {e}")))
        }
        _ => Err(bad(key, text, expected)),
    }
}

impl RequestOptions {
    /// The options of a query string (None: no query).
    pub fn from_query(query: Option<&str>) -> Result<RequestOptions, ApiError> {
        let mut o = RequestOptions::default();
        let Some(query) = query else { return Ok(o) };
        let pairs: Vec<(String, String)> = serde_urlencoded_pairs(query)?;
        for (k, v) in pairs {
            o.set_text(&k, &v)?;
        }
        Ok(o)
    }

    fn taken(&self, key: &str) -> bool {
        match key {
            "boxes" => self.boxes.is_some(),
            "flip_test" => self.flip_test.is_some(),
            "decode" => self.decode.is_some(),
            "min_face" => self.min_face.is_some(),
            "detector" => self.detector.is_some(),
            _ => false,
        }
    }

    fn check_key(&self, key: &str) -> Result<(), ApiError> {
        if !OPTION_NAMES.contains(&key) {
            return Err(ApiError::bad_request(format!("unknown option {key:?} (known: {})", OPTION_NAMES.join(", "))));
        }
        if self.taken(key) {
            return Err(ApiError::bad_request(format!("option {key} given twice")));
        }
        Ok(())
    }

    /// One option as text (a query pair or a form field).
    pub fn set_text(&mut self, key: &str, value: &str) -> Result<(), ApiError> {
        self.check_key(key)?;
        match key {
            "boxes" => {
                let boxes = value.split(';').filter(|b| !b.trim().is_empty()).map(|b| parse_box(key, b));
                let boxes: Vec<FaceBox> = boxes.collect::<Result<_, _>>()?;
                if boxes.is_empty() {
                    return Err(bad(key, value, "boxes x1,y1,x2,y2 in pixels, separated by ';'"));
                }
                self.boxes = Some(boxes);
            }
            "flip_test" => self.flip_test = Some(parse_bool(key, value)?),
            "decode" => {
                self.decode = Some(value.trim().parse().map_err(|_| bad(key, value, "quarter or dark"))?);
            }
            "min_face" => {
                let v: f32 = value.trim().parse().map_err(|_| bad(key, value, "a size in pixels >= 1"))?;
                if !(v.is_finite() && v >= 1.0) {
                    return Err(bad(key, value, "a size in pixels >= 1"));
                }
                self.min_face = Some(v);
            }
            "detector" => {
                self.detector = Some(match value.trim() {
                    "mtcnn" => true,
                    "none" => false,
                    _ => return Err(bad(key, value, "mtcnn or none")),
                })
            }
            _ => unreachable!("check_key accepts only OPTION_NAMES"),
        }
        Ok(())
    }

    /// The options of a JSON object (a multipart form's `options` part).
    pub fn set_json(&mut self, text: &str) -> Result<(), ApiError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ApiError::bad_request(format!("options: not JSON ({e})")))?;
        let serde_json::Value::Object(map) = value else {
            return Err(ApiError::bad_request("options: expected a JSON object"));
        };
        for (key, v) in map {
            let text = match (key.as_str(), &v) {
                (_, serde_json::Value::String(s)) => s.clone(),
                ("boxes", serde_json::Value::Array(boxes)) => {
                    let one = |b: &serde_json::Value| -> Option<String> {
                        let nums: Vec<String> =
                            b.as_array()?.iter().map(|n| n.as_f64().map(|f| f.to_string())).collect::<Option<_>>()?;
                        Some(nums.join(","))
                    };
                    boxes.iter().map(one).collect::<Option<Vec<_>>>().map(|b| b.join(";")).ok_or_else(|| {
                        ApiError::bad_request("option boxes: expected [[x1, y1, x2, y2], ...] in pixels")
                    })?
                }
                (_, serde_json::Value::Bool(b)) => b.to_string(),
                (_, serde_json::Value::Number(n)) => n.to_string(),
                _ => return Err(ApiError::bad_request(format!("option {key}: unexpected JSON value {v}"))),
            };
            self.set_text(&key, &text)?;
        }
        Ok(())
    }

    /// The options with the server's defaults filled in, checked against what `model` can do.
    pub fn resolve(&self, model: &Model) -> Result<Resolved, ApiError> {
        let mut test = model.defaults.test;
        if let Some(f) = self.flip_test {
            test.flip_test = f;
        }
        if let Some(d) = self.decode {
            test.decode = d;
        }
        if test.flip_test && !model.flip_test_available {
            return Err(ApiError::bad_request(format!(
                "option flip_test: this model's {} landmarks have no mirrored pairs",
                model.joints
            )));
        }
        let faces = match (&self.boxes, self.detector.unwrap_or(model.defaults.detector)) {
            (Some(b), _) => FacesFrom::Boxes(b.clone()),
            (None, true) => {
                if model.detector.is_none() {
                    return Err(ApiError::bad_request(
                        "option detector=mtcnn: the server was started with --detector none",
                    ));
                }
                let mut d = model.defaults.detector_options.clone();
                if let Some(m) = self.min_face {
                    d.min_face = m;
                }
                FacesFrom::Detector(d)
            }
            (None, false) => FacesFrom::WholeImage,
        };
        Ok(Resolved { faces, test })
    }
}

/// `a=1&b=x%20y` → [("a", "1"), ("b", "x y")].
fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let uri: axum::http::Uri =
        format!("/?{query}").parse().map_err(|_| ApiError::bad_request("the query string is not a valid URI part"))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("query string: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_from_query_and_json() {
        let o = RequestOptions::from_query(Some("boxes=10,20,110,120;1,2,3,4&flip_test=1&decode=dark&min_face=40"))
            .unwrap();
        assert_eq!(o.boxes.as_ref().unwrap().len(), 2);
        assert_eq!((o.flip_test, o.decode, o.min_face), (Some(true), Some(DecodeMode::Dark), Some(40.0)));
        let mut j = RequestOptions::default();
        j.set_json(
            r#"{"boxes": [[10, 20, 110, 120], [1, 2, 3, 4]], "flip_test": true, "decode": "dark", "min_face": 40}"#,
        )
        .unwrap();
        assert_eq!(j, o);
        for (query, needle) in [
            ("boxes=1,2,3", "option boxes"),
            ("boxes=5,5,1,1", "x2 must exceed x1"),
            ("flip_test=maybe", "true or false"),
            ("decode=best", "quarter or dark"),
            ("min_face=0", ">= 1"),
            ("detector=haar", "mtcnn or none"),
            ("colour=red", "unknown option"),
            ("decode=dark&decode=quarter", "given twice"),
        ] {
            let e = RequestOptions::from_query(Some(query)).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(e.message.contains(needle), "{query}: {e}");
        }
        let mut j = RequestOptions::default();
        assert!(j.set_json("[1]").unwrap_err().message.contains("JSON object"));
        assert!(j.set_json(r#"{"boxes": [[1, 2]]}"#).unwrap_err().message.contains("boxes"));
    }
}
