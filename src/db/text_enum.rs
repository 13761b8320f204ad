//! Enums stored as `TEXT` under fixed strings, on both backends: a connection's status, an
//! event's kind and outcome, a cache invalidation's kind. Writing one is a variant (a typo does not
//! compile); reading one back gives the variant, or — for a string no variant has — a
//! deserialization error naming the enum and the string (the query fails; nothing panics).
//!
//! A string no variant has is what an older instance reads when a newer one, during a rolling
//! upgrade on a shared database, writes a value it added. Where one such row must not make a
//! whole page fail, the enum names the variant to read it as (`unknown => Variant;` after the
//! variants: the fail-closed meaning, logged as a warning), or the query reads the column as a
//! string and skips the row (connection events: display only).
//!
//! The strings are a storage format: existing rows hold them, so a variant's string never changes.

/// A stored string that names no variant of the enum it was read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {text:?} in the database")]
pub struct UnknownText {
    pub what: &'static str,
    /// The stored string (at most 64 characters of it).
    pub text: String,
}

/// Define an enum of `Variant = "stored string"`s with `as_str()`, `ALL`, `FromStr`, `Display`
/// and Diesel's `ToSql`/`FromSql` for `Text` on every backend that stores a `str` as `Text`
/// (SQLite and PostgreSQL).
macro_rules! text_enum {
    (@fallback) => { None };
    (@fallback $v:path) => { Some($v) };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)? }
        $( unknown => $fallback:ident; )?
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
        )]
        #[diesel(sql_type = diesel::sql_types::Text)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// What a stored string no variant has is read as (`None`: it is an error).
            pub const UNKNOWN_READS_AS: Option<$name> = $crate::db::text_enum::text_enum!(@fallback $($name::$fallback)?);

            /// The stored string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::db::text_enum::UnknownText;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::db::text_enum::UnknownText {
                        what: stringify!($name),
                        text: s.chars().take(64).collect(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<DB> diesel::serialize::ToSql<diesel::sql_types::Text, DB> for $name
        where
            DB: diesel::backend::Backend,
            str: diesel::serialize::ToSql<diesel::sql_types::Text, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut diesel::serialize::Output<'b, '_, DB>) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, DB>>::to_sql(self.as_str(), out)
            }
        }

        impl<DB> diesel::deserialize::FromSql<diesel::sql_types::Text, DB> for $name
        where
            DB: diesel::backend::Backend,
            String: diesel::deserialize::FromSql<diesel::sql_types::Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = <String as diesel::deserialize::FromSql<diesel::sql_types::Text, DB>>::from_sql(bytes)?;
                match (text.parse::<$name>(), $name::UNKNOWN_READS_AS) {
                    (Ok(v), _) => Ok(v),
                    (Err(unknown), Some(v)) => {
                        // Once per process and enum: such rows are read on every page view.
                        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            tracing::warn!(
                                error = %unknown,
                                read_as = v.as_str(),
                                "a value this version does not know (said once per process)"
                            );
                        }
                        Ok(v)
                    }
                    (Err(unknown), None) => Err(unknown.into()),
                }
            }
        }
    };
}
pub(crate) use text_enum;

/// Assert, for every variant of the text enum `$ty`, against SQLite (in memory) and — when
/// `TOKENVAULT_TEST_POSTGRES_URL` is set — PostgreSQL: that it is written as its string, byte
/// for byte; that the string as a row holds it reads back as the variant; and that a string no
/// variant has is a deserialization error naming the enum, not a panic — or, for an enum with
/// `unknown => Variant;`, reads as that variant.
#[cfg(test)]
macro_rules! assert_text_round_trips {
    ($ty:ty) => {{
        let mut sqlite = <diesel::SqliteConnection as diesel::Connection>::establish(":memory:").unwrap();
        $crate::db::text_enum::check_text_round_trips!($ty, &mut sqlite);
        if let Some(url) = std::env::var("TOKENVAULT_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty()) {
            let mut pg = <diesel::PgConnection as diesel::Connection>::establish(&url).expect("PostgreSQL connects");
            $crate::db::text_enum::check_text_round_trips!($ty, &mut pg);
        }
    }};
}
#[cfg(test)]
pub(crate) use assert_text_round_trips;

#[cfg(test)]
macro_rules! check_text_round_trips {
    ($ty:ty, $conn:expr) => {{
        use diesel::{IntoSql, RunQueryDsl};
        let conn = $conn;
        let stored = |text: &str| diesel::dsl::sql::<diesel::sql_types::Text>(&format!("'{text}'"));
        for &v in <$ty>::ALL {
            let written: String = diesel::select(v.into_sql::<diesel::sql_types::Text>()).get_result(conn).unwrap();
            assert_eq!(written, v.as_str(), "{v:?} is stored as its string");
            let read: $ty = diesel::select(stored(v.as_str())).get_result(conn).unwrap();
            assert_eq!(read, v, "{:?} reads back", v.as_str());
            let both: $ty = diesel::select(v.into_sql::<diesel::sql_types::Text>()).get_result(conn).unwrap();
            assert_eq!(both, v);
            assert_eq!(v.as_str().parse::<$ty>(), Ok(v));
        }
        let unknown = diesel::select(stored("no such value")).get_result::<$ty>(conn);
        match <$ty>::UNKNOWN_READS_AS {
            Some(v) => assert_eq!(unknown, Ok(v), "an unknown string reads as the enum's fallback"),
            None => {
                // What the error's log line says (Diesel names the field; the cause names the value).
                let message =
                    $crate::error::AppError::from(unknown.expect_err("an unknown string is an error")).to_string();
                let expected = format!("unknown {} \"no such value\" in the database", stringify!($ty));
                assert!(message.contains(&expected), "{message}");
            }
        }
        assert!("no such value".parse::<$ty>().is_err(), "parsing stays strict");
    }};
}
#[cfg(test)]
pub(crate) use check_text_round_trips;
