//! The account API: what a demo access token opens (401 for expired or revoked tokens).

use rocket::http::Status;
use rocket::request::{FromRequest, Outcome, Request};
use rocket::serde::json::{json, Json, Value};
use rocket::{get, routes, Route, State};

use super::OAuthError;
use crate::db::models::demo::{self as model, KIND_ACCESS};
use crate::state::AppState;
use crate::util::{now, sha256_hex};

pub(super) fn routes() -> Vec<Route> {
    routes![account]
}

/// The bearer token of a request, if any.
pub struct Bearer(Option<String>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Bearer {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let token = req.headers().get_one("Authorization").and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
        });
        Outcome::Success(Bearer(token))
    }
}

#[get("/api/account")]
async fn account(app: &State<AppState>, bearer: Bearer) -> Result<Json<Value>, OAuthError> {
    let invalid = OAuthError(Status::Unauthorized, "invalid_token", "the access token is invalid, expired or revoked");
    let Some(token) = bearer.0 else { return Err(invalid) };
    let found = app.db.run(move |conn| Ok(model::find_token(conn, &sha256_hex(&token))?)).await?;
    match found {
        Some((t, grant)) if t.kind == KIND_ACCESS && !grant.revoked && t.expires_at.is_some_and(|e| e > now()) => {
            let id = format!("dbid:{}", &sha256_hex(&grant.account)[..16]);
            let name = grant.account.split('@').next().unwrap_or("").to_string();
            Ok(Json(json!({
                "id": id,
                "name": name,
                "email": grant.account,
                "scopes": grant.scopes.split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
                "grant_created_at": grant.created_at,
            })))
        }
        _ => Err(invalid),
    }
}
