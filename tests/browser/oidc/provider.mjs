// A real OpenID Connect provider for the browser tests (issue 21): the `oidc-provider` package
// (installed by .ci/run into target/oidc), with its development sign-in and consent pages.
// Usage: node provider.mjs <port> <client_id> <client_secret> <redirect_uri>
// Prints "listening <issuer>" once it accepts connections.
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, redirectUri] = process.argv.slice(2);
const issuer = `http://localhost:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  features: { devInteractions: { enabled: true }, revocation: { enabled: true } },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, email: `${sub}@oidc.example`, email_verified: true, name: `Person ${sub}` };
      },
    };
  },
});
provider.listen(Number(port), () => console.log(`listening ${issuer}`));
