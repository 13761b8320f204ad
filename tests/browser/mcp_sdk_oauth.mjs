// A real MCP client that authorizes itself: the official TypeScript SDK (npm
// @modelcontextprotocol/sdk) with its own OAuth client provider (`OAuthClientProvider`, driven by
// the SDK's `auth()` inside `StreamableHTTPClientTransport`). Run by tests/browser/mcp_sdk_oauth.rs.
//
// The SDK's first request to /mcp gets 401 with `WWW-Authenticate: Bearer resource_metadata=…`;
// it discovers the protected resource and the authorization server, registers (dynamic
// registration) or uses a Client ID Metadata Document URL as its client_id, and starts the
// authorization code flow with PKCE: `redirectToAuthorization` prints `AUTHORIZE <url>` and the
// test opens it in Chromium. The consent page sends the browser to this script's loopback redirect
// URI (http://127.0.0.1:<port>/callback, on a port of its own, printed first as `LISTENING
// <port>`), whose code goes to `transport.finishAuth(code)`. Then
// the client connects again, lists the tools, calls `call_api` on the demo provider and prints
// `RESULT <json>`. Tokens are never printed: they go to the file TOKENS_FILE names, for the test
// to look for them in this script's output.
//
// Usage: MCP_SDK=<package dir> TOKENS_FILE=<path> node mcp_sdk_oauth.mjs <mcp url> [<document url>]
// With a document URL the client's id is that URL (a Client ID Metadata Document the test serves);
// without one the SDK registers dynamically.
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const load = (path) => import(pathToFileURL(`${process.env.MCP_SDK}/dist/esm/${path}`).href);
const { Client } = await load('client/index.js');
const { StreamableHTTPClientTransport } = await load('client/streamableHttp.js');
const { auth, UnauthorizedError } = await load('client/auth.js');
const [mcpUrl, documentUrl] = process.argv.slice(2);
let redirectUrl; // once the loopback server listens

// Everything kept in memory: one process is one session of this client.
class Provider {
  constructor(clientId) {
    this.stored = clientId ? { client: { client_id: clientId } } : {};
    this.expectedState = randomBytes(16).toString('hex');
    this.authorizeUrls = [];
  }
  get redirectUrl() {
    return redirectUrl;
  }
  get clientMetadata() {
    return {
      client_name: 'SDK Agent',
      redirect_uris: [redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }
  state() {
    return this.expectedState;
  }
  clientInformation() {
    return this.stored.client;
  }
  saveClientInformation(info) {
    this.stored.client = info;
  }
  tokens() {
    return this.stored.tokens;
  }
  saveTokens(tokens) {
    this.stored.tokens = tokens;
  }
  saveCodeVerifier(verifier) {
    this.stored.verifier = verifier;
  }
  codeVerifier() {
    return this.stored.verifier;
  }
  saveDiscoveryState(state) {
    this.stored.discovery = state;
  }
  discoveryState() {
    return this.stored.discovery;
  }
  redirectToAuthorization(url) {
    this.authorizeUrls.push(url.href);
    console.log(`AUTHORIZE ${url.href}`);
  }
}

// The loopback redirect URI on a free port: the first request to /callback settles the code.
async function callback(provider) {
  let server;
  const code = new Promise((resolve, reject) => {
    server = createServer((req, res) => {
      const url = new URL(req.url, redirectUrl);
      if (url.pathname !== '/callback') {
        res.writeHead(404).end();
        return;
      }
      const page = '<!doctype html><title>SDK Agent</title><p id="sdk-callback">Back at the MCP client.</p>';
      res.writeHead(200, { 'content-type': 'text/html', connection: 'close' }).end(page);
      server.close();
      const q = url.searchParams;
      if (q.get('state') !== provider.expectedState) reject(new Error('the state came back changed'));
      else if (q.get('error')) reject(new Error(`authorization refused: ${q.get('error')}`));
      else resolve({ code: q.get('code'), iss: q.get('iss') });
    });
  });
  await new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  redirectUrl = `http://127.0.0.1:${port}/callback`;
  console.log(`LISTENING ${port}`);
  return { code };
}

// With a document URL: does the SDK itself choose URL-based client ids here? It only accepts an
// https `clientMetadataUrl` (SEP-991), which the test cannot serve with a certificate tokenvault
// trusts, so the probe stops at the authorization URL it would open; it must name that URL as
// client_id, which the SDK only does when the metadata says `client_id_metadata_document_supported`.
async function probeDocumentSupport() {
  const probe = new Provider();
  probe.clientMetadataUrl = 'https://agent.example/tokenvault-test-client.json';
  probe.redirectToAuthorization = (url) => probe.authorizeUrls.push(url.href);
  const outcome = await auth(probe, { serverUrl: new URL(mcpUrl) });
  return { outcome, clientId: new URL(probe.authorizeUrls[0]).searchParams.get('client_id') };
}

const provider = new Provider(documentUrl);
const { code: returned } = await callback(provider);
const first = new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider });
try {
  await new Client({ name: 'sdk-agent', version: '1.0.0' }).connect(first);
  throw new Error('connected to /mcp without authorization');
} catch (e) {
  if (!(e instanceof UnauthorizedError)) throw e;
}
const back = await returned;
await first.finishAuth(back.code);

const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider });
const client = new Client({ name: 'sdk-agent', version: '1.0.0' });
await client.connect(transport);
const tools = await client.listTools();
const called = await client.callTool({ name: 'call_api', arguments: { service: 'demo', path: 'account' } });
await transport.terminateSession();
await client.close();
writeFileSync(process.env.TOKENS_FILE, JSON.stringify(provider.stored.tokens));
const result = {
  clientId: provider.stored.client.client_id,
  authorizeUrls: provider.authorizeUrls,
  iss: back.iss,
  discovery: {
    resourceMetadataUrl: provider.stored.discovery?.resourceMetadataUrl,
    authorizationServerUrl: provider.stored.discovery?.authorizationServerUrl,
  },
  protocolVersion: transport.protocolVersion,
  tools: tools.tools.map((t) => t.name),
  called,
  probe: documentUrl ? await probeDocumentSupport() : null,
};
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(0);
