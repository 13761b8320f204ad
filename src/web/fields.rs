//! The fields a page reads from its form or query, read as the API reads its parameters: each at
//! most once — a repeated one is a 400, since which one would win is a guess (`connection=9&
//! connection=1` must not act on connection 1) — and a connection id a number (a malformed one is
//! a 400, never "none given"). Rocket hands a page every value of a field as a `Vec<String>`.

use crate::error::{AppError, AppResult};

/// The refusal of a parameter given more than once (the API's words too).
pub fn given_twice(name: &str) -> AppError {
    AppError::BadRequest(format!("`{name}` is given more than once; give it once."))
}

/// The one value of field `name`, if given.
pub fn once<'v>(name: &str, values: &'v [String]) -> AppResult<Option<&'v str>> {
    match values {
        [] => Ok(None),
        [one] => Ok(Some(one.as_str())),
        _ => Err(given_twice(name)),
    }
}

/// The connection id in field `connection`, if given.
pub fn connection_id(values: &[String]) -> AppResult<Option<i64>> {
    once("connection", values)?
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| AppError::BadRequest("`connection` must be a connection id (a number).".into()))
        })
        .transpose()
}

/// A yes/no field (`true` or `false`; absent: `false`).
pub fn flag(name: &str, values: &[String]) -> AppResult<bool> {
    match once(name, values)? {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(AppError::BadRequest(format!("`{name}` must be `true` or `false`."))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fields_are_given_once_and_well_formed() {
        assert_eq!(connection_id(&v(&[])).unwrap(), None);
        assert_eq!(connection_id(&v(&["12"])).unwrap(), Some(12));
        for bad in [&["9", "1"][..], &["abc"], &["1x"], &[""], &["99999999999999999999"]] {
            assert!(matches!(connection_id(&v(bad)), Err(AppError::BadRequest(_))), "{bad:?}");
        }
        assert!(matches!(connection_id(&v(&["1", "1"])), Err(AppError::BadRequest(m)) if m.contains("more than once")));
        assert_eq!(once("account", &v(&["a"])).unwrap(), Some("a"));
        assert!(once("account", &v(&["a", "b"])).is_err());
        assert!(!flag("add_account", &v(&[])).unwrap() && flag("add_account", &v(&["true"])).unwrap());
        assert!(flag("add_account", &v(&["yes"])).is_err() && flag("add_account", &v(&["true", "false"])).is_err());
    }
}
