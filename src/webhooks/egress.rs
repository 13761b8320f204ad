//! Where webhook URLs entered on `/admin/webhooks` may point. An administrator of the app is not
//! necessarily the operator of its network: unless `webhook_private_urls` is on (the default
//! in `debug` only), such a URL must name a public host — no loopback, private, link-local,
//! unique-local, shared (CGNAT) or unspecified address as a literal, no `localhost` — and its
//! name must resolve to public addresses only when the delivery connects ([`PublicOnly`], which
//! also defeats a name that resolves elsewhere after it was checked). Otherwise "send test event"
//! and the delivery statuses would scan the server's own network. Endpoints from `Rocket.toml`
//! are the operator's and keep the providers' rules.
//!
//! IPv6 addresses that carry an IPv4 address follow one rule ([`embedded_v4`]): where the
//! address alone says which IPv4 host the packets reach, that IPv4 address decides, under the
//! IPv4 rules — IPv4-mapped `::ffff:0:0/96`, IPv4-translated (SIIT) `::ffff:0:0:0/96`, the NAT64
//! well-known prefix `64:ff9b::/96` and 6to4 `2002::/16`. The forms that are deprecated, local
//! to a network, or tunnels to more than one IPv4 host are refused whatever they carry:
//! IPv4-compatible `::/96` (deprecated; `::` and `::1` are in it), Teredo `2001::/32`, the
//! local-use NAT64 prefix `64:ff9b:1::/48` (where the IPv4 address sits is the network's
//! choice) and the rest of `64:ff9b::/32`. A NAT64 with a network-specific prefix cannot be
//! recognised from the address: it is the NAT64's job to refuse non-global IPv4 destinations.

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

/// What an IPv6 address says about an IPv4 address it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedded {
    /// No IPv4 address in it: the IPv6 rules apply.
    None,
    /// Packets to it reach this IPv4 host (mapped, translated, NAT64 well-known prefix, 6to4):
    /// the IPv4 rules apply to that address.
    Reaches(Ipv4Addr),
    /// A form that is deprecated, local to a network, or a tunnel whose destination the address
    /// alone does not fix: never public.
    Refused(&'static str),
}

/// The IPv4 address an IPv6 address carries, by the form it has (see the module comment).
pub fn embedded_v4(ip: Ipv6Addr) -> Embedded {
    let seg = ip.segments();
    let o = ip.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match seg {
        // ::ffff:a.b.c.d, IPv4-mapped (RFC 4291 2.5.5.2).
        [0, 0, 0, 0, 0, 0xffff, ..] => Embedded::Reaches(last),
        // ::ffff:0:a.b.c.d, IPv4-translated (SIIT, RFC 7915/6052's ::ffff:0:0:0/96).
        [0, 0, 0, 0, 0xffff, 0, ..] => Embedded::Reaches(last),
        // ::a.b.c.d, IPv4-compatible (deprecated by RFC 4291 2.5.5.1); :: and ::1 too.
        [0, 0, 0, 0, 0, 0, ..] => Embedded::Refused("IPv4-compatible"),
        // 64:ff9b::a.b.c.d, the NAT64 well-known prefix (RFC 6052: never a non-global IPv4).
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Embedded::Reaches(last),
        // 64:ff9b:1::/48, local-use NAT64 (RFC 8215): the network chooses where the address sits.
        [0x64, 0xff9b, 1, ..] => Embedded::Refused("local-use NAT64"),
        [0x64, 0xff9b, ..] => Embedded::Refused("NAT64 (not the well-known /96)"),
        // 2002:AABB:CCDD::/48, 6to4 (RFC 3056): the relay delivers to a.b.c.d.
        [0x2002, ..] => Embedded::Reaches(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        // 2001:0::/32, Teredo (RFC 4380): a tunnel through a server and a client address.
        [0x2001, 0, ..] => Embedded::Refused("Teredo"),
        _ => Embedded::None,
    }
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    match embedded_v4(ip) {
        Embedded::Reaches(v4) => return is_public_v4(v4),
        Embedded::Refused(_) => return false,
        Embedded::None => {}
    }
    let seg = ip.segments();
    let first = seg[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        // fec0::/10 site-local (deprecated, still routed inside some networks)
        || (first & 0xffc0) == 0xfec0
        // 100::/64 discard-only (RFC 6666)
        || (first == 0x0100 && seg[1..4] == [0, 0, 0])
        // 2001:2::/48 benchmarking, 2001:db8::/32 and 3fff::/20 documentation
        || (first == 0x2001 && seg[1] == 2 && seg[2] == 0)
        || (first == 0x2001 && seg[1] == 0x0db8)
        || (first == 0x3fff && seg[1] & 0xf000 == 0))
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

/// Name resolution that keeps only public addresses (none left: the connection fails) — and
/// loopback ones too when `loopback` is set (the `debug` profile's rule for providers set in the
/// app, `crate::oauth::managed::Egress`).
#[derive(Debug, Default, Clone, Copy)]
pub struct PublicOnly {
    pub loopback: bool,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let loopback = self.loopback;
        Box::pin(async move {
            let found = rocket::tokio::net::lookup_host((name.as_str(), 0)).await?;
            let public = keep_public(found, loopback)?;
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// The public (or, with `loopback`, loopback) addresses among those a name resolved to; an error
/// when there are none.
fn keep_public(
    found: impl IntoIterator<Item = SocketAddr>,
    loopback: bool,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let allowed = |ip: IpAddr| is_public(ip) || (loopback && ip.is_loopback());
    let public: Vec<SocketAddr> = found.into_iter().filter(|a| allowed(a.ip())).collect();
    if public.is_empty() {
        return Err("the host resolves to no public address".into());
    }
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::{check_public_host, embedded_v4, is_public, keep_public, Embedded, PublicOnly};
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
            "fec0::1",
            "ff02::1",
            "100::1",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "3fff:fff::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "100.128.0.1", "2606:4700::1111", "2a00:1450::1", "3fff:1000::1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    /// Each IPv6 form that carries an IPv4 address: those that reach it are judged by it (a
    /// private one refused, a public one allowed), the others refused whatever they carry.
    #[test]
    fn ipv6_forms_carrying_an_ipv4_address_follow_one_rule() {
        let reaches = [
            // (form, private or special inside, public inside, embedded public address)
            ("mapped", "::ffff:127.0.0.1", "::ffff:8.8.8.8"),
            ("mapped", "::ffff:169.254.169.254", "::ffff:93.184.216.34"),
            ("mapped", "::ffff:10.0.0.1", "::ffff:100.128.0.1"),
            ("translated (SIIT)", "::ffff:0:127.0.0.1", "::ffff:0:8.8.8.8"),
            ("translated (SIIT)", "::ffff:0:10.0.0.1", "::ffff:0:93.184.216.34"),
            ("translated (SIIT)", "::ffff:0:169.254.169.254", "::ffff:0:1.1.1.1"),
            ("translated (SIIT)", "::ffff:0:0.0.0.0", "::ffff:0:8.8.4.4"),
            ("translated (SIIT)", "::ffff:0:192.168.0.1", "::ffff:0:9.9.9.9"),
            ("NAT64 well-known", "64:ff9b::127.0.0.1", "64:ff9b::8.8.8.8"),
            ("NAT64 well-known", "64:ff9b::a00:1", "64:ff9b::5db8:d822"),
            ("NAT64 well-known", "64:ff9b::169.254.169.254", "64:ff9b::1.1.1.1"),
            ("6to4", "2002:7f00:1::1", "2002:808:808::1"),
            ("6to4", "2002:a00:1::", "2002:5db8:d822:1::1"),
            ("6to4", "2002:a9fe:a9fe::1", "2002:101:101::"),
        ];
        for (form, private, public) in reaches {
            let (p, q) = (private.parse().unwrap(), public.parse().unwrap());
            assert!(matches!(embedded_v4(p), Embedded::Reaches(_)), "{form}: {private}");
            assert!(matches!(embedded_v4(q), Embedded::Reaches(_)), "{form}: {public}");
            assert!(!is_public(std::net::IpAddr::V6(p)), "{form}: {private} carries a non-public IPv4 address");
            assert!(is_public(std::net::IpAddr::V6(q)), "{form}: {public} carries a public IPv4 address");
        }
        assert_eq!(embedded_v4("::ffff:0:10.1.2.3".parse().unwrap()), Embedded::Reaches("10.1.2.3".parse().unwrap()));
        assert_eq!(embedded_v4("2002:c000:221::".parse().unwrap()), Embedded::Reaches("192.0.2.33".parse().unwrap()));

        let refused = [
            ("IPv4-compatible", "::8.8.8.8"),
            ("IPv4-compatible", "::127.0.0.1"),
            ("IPv4-compatible", "::1"),
            ("IPv4-compatible", "::"),
            ("Teredo", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
            ("Teredo", "2001::f7f7:f7f7"),
            ("local-use NAT64", "64:ff9b:1::808:808"),
            ("local-use NAT64", "64:ff9b:1:a00::1"),
            ("NAT64 (not the well-known /96)", "64:ff9b:2::808:808"),
            ("NAT64 (not the well-known /96)", "64:ff9b::1:0:808:808"),
        ];
        for (form, ip) in refused {
            let v6 = ip.parse().unwrap();
            assert_eq!(embedded_v4(v6), Embedded::Refused(form), "{ip}");
            assert!(!is_public(std::net::IpAddr::V6(v6)), "{form}: {ip}");
        }
        // Near misses are ordinary IPv6 addresses.
        for ip in ["1:ffff::8.8.8.8", "::1:ffff:0:808:808", "2003::1", "2001:1::1", "65:ff9b::1"] {
            assert_eq!(embedded_v4(ip.parse().unwrap()), Embedded::None, "{ip}");
        }
    }

    #[test]
    fn page_urls_must_name_a_public_host() {
        for bad in [
            "http://127.0.0.1:9/hook",
            "https://10.0.0.5/hook",
            "https://[::1]/hook",
            "https://[::ffff:169.254.169.254]/",
            "https://[::ffff:0:169.254.169.254]/",
            "https://[::ffff:0:7f00:1]/hook",
            "https://[64:ff9b::10.0.0.1]/",
            "https://[64:ff9b:1::808:808]/",
            "https://[2002:c0a8:101::1]/",
            "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
            "https://[::8.8.8.8]/",
            "https://localhost/hook",
            "https://api.localhost/hook",
            "https://intranet/hook",
        ] {
            let e = check_public_host(&url::Url::parse(bad).unwrap()).unwrap_err();
            assert!(e.contains("public host") && !e.contains(bad), "{bad}: {e}");
        }
        for good in [
            "https://hooks.example.com/tv",
            "https://93.184.216.34/x",
            "https://[2606:4700::1111]/",
            "https://[::ffff:0:8.8.8.8]/",
            "https://[64:ff9b::8.8.8.8]/",
        ] {
            assert!(check_public_host(&url::Url::parse(good).unwrap()).is_ok(), "{good}");
        }
    }

    /// The connect-time filter keeps public addresses only, by the same rules.
    #[test]
    fn resolved_addresses_are_filtered_by_the_same_rules() {
        let addrs = |list: &[&str]| -> Vec<std::net::SocketAddr> {
            list.iter().map(|ip| std::net::SocketAddr::new(ip.parse().unwrap(), 443)).collect()
        };
        let e =
            keep_public(addrs(&["::ffff:0:127.0.0.1", "::ffff:0:10.0.0.1", "64:ff9b::a9fe:a9fe", "::7f00:1"]), false)
                .unwrap_err();
        assert!(e.to_string().contains("no public address"), "{e}");
        let kept =
            keep_public(addrs(&["::ffff:0:192.168.1.1", "::ffff:0:8.8.8.8", "10.0.0.1", "2606:4700::1111"]), false)
                .unwrap();
        assert_eq!(kept, addrs(&["::ffff:0:8.8.8.8", "2606:4700::1111"]));
        assert!(keep_public(addrs(&["127.0.0.1", "::1"]), false).is_err());
        let debug = keep_public(addrs(&["127.0.0.1", "::1", "10.0.0.1"]), true).unwrap();
        assert_eq!(debug, addrs(&["127.0.0.1", "::1"]), "loopback in debug, never private");
    }

    #[rocket::async_test]
    async fn a_name_that_resolves_to_loopback_is_refused_at_connect_time() {
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let e = PublicOnly::default().resolve(name).await.err().expect("localhost resolves to loopback only");
        assert!(e.to_string().contains("no public address"), "{e}");
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(PublicOnly { loopback: true }.resolve(name).await.is_ok(), "debug allows loopback");
    }
}
