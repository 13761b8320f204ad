//! What the benchmarks seed beside the server's own flows: the fake provider's client credentials
//! and a user's API key, written as the CLI writes them.

use tokenvault::util::ExposeSecret;

use crate::common;

pub fn cipher() -> tokenvault::vault::Cipher {
    tokenvault::vault::Cipher::from_base64(common::VAULT_KEY, &[]).unwrap()
}

/// The fake provider's client id and secret, in the vault of `db`.
pub fn vault(db: &tokenvault::db::Db) {
    let mut conn = db.conn().unwrap();
    tokenvault::vault::store::set(&mut conn, &cipher(), "fake.client_id", common::CLIENT_ID, "bench").unwrap();
    tokenvault::vault::store::set(&mut conn, &cipher(), "fake.client_secret", common::CLIENT_SECRET, "bench").unwrap();
}

/// A new API key (without limits) of `user_id`.
pub fn api_key(conn: &mut tokenvault::db::Conn, user_id: i64) -> String {
    let actor = tokenvault::audit::Actor::Cli;
    let created = tokenvault::auth::api_key::create(conn, &cipher(), actor, user_id, "bench", &Default::default(), 20);
    created.unwrap().key.expose_secret().to_string()
}
