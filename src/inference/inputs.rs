//! The `input` (OpenAI) / `inputs` (TEI) field in all four shapes both accept: a string, an
//! array of strings, an array of token ids, an array of arrays of token ids.

use serde_json::Value;

use super::error::{ApiError, ErrorKind};
use crate::tokenize::Input;

const INPUT_SHAPES: &str =
    "a string, an array of strings, an array of token ids, or an array of arrays of token ids";

fn token_ids(v: &[Value], field: &'static str) -> Result<Vec<u32>, ApiError> {
    v.iter()
        .map(|x| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::Validation,
                        format!("`{field}`: token ids must be non-negative integers, got {x}"),
                    )
                    .param(field)
                })
        })
        .collect()
}

/// Reads `input` (OpenAI) or `inputs` (TEI) in any of the four shapes.
pub fn parse_inputs(v: &Value, field: &'static str) -> Result<Vec<Input>, ApiError> {
    let wrong = || {
        ApiError::new(
            ErrorKind::Validation,
            format!("`{field}` must be {INPUT_SHAPES}"),
        )
        .param(field)
    };
    let empty =
        || ApiError::new(ErrorKind::Empty, format!("`{field}` cannot be empty")).param(field);
    match v {
        Value::Null => {
            Err(ApiError::new(ErrorKind::Validation, format!("`{field}` is required")).param(field))
        }
        Value::String(s) => Ok(vec![Input::Text(s.clone())]),
        Value::Array(items) => {
            let Some(first) = items.first() else {
                return Err(empty());
            };
            match first {
                Value::String(_) => items
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(|s| Input::Text(s.to_string()))
                            .ok_or_else(wrong)
                    })
                    .collect(),
                Value::Number(_) => Ok(vec![Input::Ids(token_ids(items, field)?)]),
                Value::Array(_) => items
                    .iter()
                    .map(|x| match x {
                        Value::Array(ids) => Ok(Input::Ids(token_ids(ids, field)?)),
                        _ => Err(wrong()),
                    })
                    .collect(),
                _ => Err(wrong()),
            }
        }
        _ => Err(wrong()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn four_input_shapes() {
        assert!(matches!(
            &parse_inputs(&json!("a"), "input").unwrap()[..],
            [Input::Text(_)]
        ));
        assert_eq!(parse_inputs(&json!(["a", "b"]), "input").unwrap().len(), 2);
        assert!(
            matches!(&parse_inputs(&json!([1, 2]), "input").unwrap()[..], [Input::Ids(v)] if v == &[1, 2])
        );
        assert_eq!(
            parse_inputs(&json!([[1], [2, 3]]), "input").unwrap().len(),
            2
        );
    }

    #[test]
    fn bad_shapes_are_client_errors() {
        for (v, status) in [
            (json!([]), 400),
            (json!(null), 422),
            (json!(5), 422),
            (json!({"a": 1}), 422),
            (json!(["a", 1]), 422),
            (json!([-1]), 422),
            (json!([1.5]), 422),
            (json!([[1], "a"]), 422),
            (json!([true]), 422),
            (json!([4294967296u64]), 422),
        ] {
            let e = parse_inputs(&v, "input").unwrap_err();
            assert_eq!(e.status(), status, "{v}");
        }
    }
}
