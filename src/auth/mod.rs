//! Who is asking: password hashing, server-side sessions, request guards and CSRF protection.

pub mod accounts;
pub mod api_key;
pub mod csrf;
pub mod device;
pub mod guards;
pub mod metrics;
pub mod password;
pub mod session;
pub mod throttle;

pub use csrf::{Csrf, CsrfField, CsrfOnly};
pub use guards::{AdminUser, CurrentUser};
