//! Where webhook URLs entered on `/admin/webhooks` may point. An administrator of the app is not
//! necessarily the operator of its network: unless `webhook_private_urls` is on (the default
//! in `debug` only), such a URL must name a public host — no loopback, private, link-local,
//! unique-local, shared (CGNAT) or unspecified address as a literal, no `localhost` — and its
//! name must resolve to public addresses only when the delivery connects ([`PublicOnly`], which
//! also defeats a name that resolves elsewhere after it was checked). Otherwise "send test event"
//! and the delivery statuses would scan the server's own network. Endpoints from `Rocket.toml`
//! are the operator's and keep the providers' rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        // 100.64.0.0/10 (shared, carrier-grade NAT), 192.0.0.0/24 (protocol assignments),
        // 198.18.0.0/15 (benchmarking), 240.0.0.0/4 (reserved).
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    // The first 80 bits zero: ::ffff:a.b.c.d (mapped) is its IPv4 address; anything else there
    // (::a.b.c.d compatible, ::ffff:0:a.b.c.d SIIT, ::1, ::) is refused.
    if seg[..5].iter().all(|s| *s == 0) {
        return seg[5] == 0xffff && is_public_v4(ip.to_ipv4_mapped().expect("mapped"));
    }
    // 6to4 (2002::/16) carries an IPv4 address: that address decides.
    if seg[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::new((seg[1] >> 8) as u8, seg[1] as u8, (seg[2] >> 8) as u8, seg[2] as u8));
    }
    let first = seg[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local, 2001:db8::/32 documentation,
        // ::ffff:0:0/96 handled by the caller, 64:ff9b::/96 NAT64 (may map to anything).
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        // fec0::/10 site-local (deprecated, still routed inside some networks)
        || (first & 0xffc0) == 0xfec0
        // 2001::/32 Teredo (tunnels to any IPv4 address)
        || (first == 0x2001 && seg[1] == 0)
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        || (first == 0x0064 && ip.segments()[1] == 0xff9b))
}

/// The check made when a URL is saved from the page: a public host.
pub fn check_public_host(url: &Url) -> Result<(), String> {
    let refuse = || {
        Err("must name a public host: loopback, private and link-local addresses are refused for endpoints set \
             on this page (an operator can allow them with `webhook_private_urls`)"
            .to_string())
    };
    match url.host() {
        Some(Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => refuse(),
        Some(Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => refuse(),
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") || !d.contains('.') {
                refuse()
            } else {
                Ok(())
            }
        }
        Some(_) => Ok(()),
        None => refuse(),
    }
}

/// Name resolution that keeps only public addresses (none left: the connection fails).
#[derive(Debug, Default)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let found = rocket::tokio::net::lookup_host((name.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = found.filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err("the host resolves to no public address".into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{check_public_host, is_public, PublicOnly};
    use reqwest::dns::Resolve;

    #[test]
    fn private_loopback_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn page_urls_must_name_a_public_host() {
        for bad in [
            "http://127.0.0.1:9/hook",
            "https://10.0.0.5/hook",
            "https://[::1]/hook",
            "https://[::ffff:169.254.169.254]/",
            "https://localhost/hook",
            "https://api.localhost/hook",
            "https://intranet/hook",
        ] {
            let e = check_public_host(&url::Url::parse(bad).unwrap()).unwrap_err();
            assert!(e.contains("public host") && !e.contains(bad), "{bad}: {e}");
        }
        for good in ["https://hooks.example.com/tv", "https://93.184.216.34/x", "https://[2606:4700::1111]/"] {
            assert!(check_public_host(&url::Url::parse(good).unwrap()).is_ok(), "{good}");
        }
    }

    #[rocket::async_test]
    async fn a_name_that_resolves_to_loopback_is_refused_at_connect_time() {
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let e = PublicOnly.resolve(name).await.err().expect("localhost resolves to loopback only");
        assert!(e.to_string().contains("no public address"), "{e}");
    }
}
