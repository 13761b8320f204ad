DROP TABLE authz_tokens;
DROP TABLE authz_codes;
DROP TABLE authz_grants;
DROP TABLE authz_clients;
