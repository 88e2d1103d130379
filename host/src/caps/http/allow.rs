//! The HTTP allow-list: which endpoints a plugin may reach, and which
//! addresses a granted name may resolve to.
//!
//! An endpoint is `scheme://host[:port]`: the host is a name
//! (`api.example.com`), a `*.suffix` wildcard (`*.example.com`: any name
//! under it, not the suffix itself), `*` (any name) or an IP literal
//! (`127.0.0.1`, `[::1]`); the port is a number, `*` (any port) or left
//! out (the scheme's). Names never match IP literals: a request to an
//! IP goes only where the grant names that IP. A name that resolves to a
//! loopback, link-local, private or otherwise non-public address is refused
//! unless its grant entry says `private = true`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    fn parse(s: &str) -> Option<Scheme> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    /// The scheme's default port.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The host part of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Any name (`*`); never an IP literal.
    Any,
    /// Any name under this suffix (`*.example.com` keeps `example.com`).
    Under(String),
    /// This name.
    Name(String),
    /// This address.
    Ip(IpAddr),
}

/// One endpoint a plugin asks for or a grant allows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Scheme.
    pub scheme: Scheme,
    /// Host.
    pub host: HostPattern,
    /// Port (the scheme's default when the text gives none); `None` is
    /// any port (`:*`).
    pub port: Option<u16>,
}

/// The host of one request: a name or an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, lower-case, without a trailing dot.
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl Host {
    /// The host of a URI (`uri.host()`: IPv6 in brackets).
    pub fn parse(host: &str) -> Option<Host> {
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6.parse::<Ipv6Addr>().ok().map(|ip| Host::Ip(ip.into()));
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            return Some(Host::Ip(ip.into()));
        }
        // Resolvers read `2130706433`, `127.1`, `0x7f.1` and `0177.0.0.1` as
        // addresses: a name whose last label looks like a number is none.
        let last = name.rsplit('.').next().unwrap_or_default();
        if last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x") {
            return None;
        }
        valid_name(&name).then_some(Host::Name(name))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Endpoint {
    /// Parses `scheme://host[:port]` (a trailing `/` is allowed; a path is
    /// not). Without a scheme, `https` is meant.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let text = text.trim();
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (
                Scheme::parse(scheme)
                    .ok_or_else(|| format!("{text:?}: the scheme must be http or https"))?,
                rest,
            ),
            None => (Scheme::Https, text),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{text:?}: give scheme, host and port only (no path, query or user)"
            ));
        }
        let (host, port) = split_port(rest).map_err(|why| format!("{text:?}: {why}"))?;
        let port = match port {
            Port::Any => None,
            Port::Given(port) => Some(port),
            Port::Default => Some(scheme.default_port()),
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            match Host::parse(suffix) {
                Some(Host::Name(name)) => HostPattern::Under(name),
                _ => return Err(format!("{text:?}: `*.` must be followed by a DNS name")),
            }
        } else {
            match Host::parse(host) {
                Some(Host::Name(name)) => HostPattern::Name(name),
                Some(Host::Ip(ip)) => HostPattern::Ip(ip),
                None => {
                    return Err(format!(
                        "{text:?}: {host:?} is not a host name or IP address"
                    ));
                }
            }
        };
        Ok(Endpoint { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` is to this endpoint.
    pub fn matches(&self, scheme: Scheme, host: &Host, port: u16) -> bool {
        self.scheme == scheme
            && self.port.is_none_or(|p| p == port)
            && match (&self.host, host) {
                (HostPattern::Any, Host::Name(_)) => true,
                (HostPattern::Under(suffix), Host::Name(name)) => is_under(name, suffix),
                (HostPattern::Name(a), Host::Name(b)) => a == b,
                (HostPattern::Ip(a), Host::Ip(b)) => a == b,
                _ => false,
            }
    }

    /// Whether every request `other` allows, this one allows too.
    pub fn covers(&self, other: &Endpoint) -> bool {
        self.scheme == other.scheme
            && (self.port.is_none() || self.port == other.port)
            && match (&self.host, &other.host) {
                (HostPattern::Any, HostPattern::Ip(_)) => false,
                (HostPattern::Any, _) => true,
                (HostPattern::Under(s), HostPattern::Under(t)) => s == t || is_under(t, s),
                (HostPattern::Under(s), HostPattern::Name(name)) => is_under(name, s),
                (HostPattern::Name(a), HostPattern::Name(b)) => a == b,
                (HostPattern::Ip(a), HostPattern::Ip(b)) => a == b,
                _ => false,
            }
    }
}

fn is_under(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() + 1
        && name.ends_with(suffix)
        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

enum Port {
    Default,
    Any,
    Given(u16),
}

/// Splits `host[:port]` (IPv6 in brackets).
fn split_port(text: &str) -> Result<(&str, Port), String> {
    let (host, port) = if text.starts_with('[') {
        match text.find(']') {
            Some(end) => {
                let rest = &text[end + 1..];
                let port = match rest.strip_prefix(':') {
                    Some(port) => Some(port),
                    None if rest.is_empty() => None,
                    None => return Err("junk after the IPv6 address".into()),
                };
                (&text[..=end], port)
            }
            None => return Err("an IPv6 address needs its closing `]`".into()),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        Some("*") => Port::Any,
        Some(port) => Port::Given(
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{port:?} is not a port"))?,
        ),
        None => Port::Default,
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok((host, port))
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        match &self.host {
            HostPattern::Any => f.write_str("*")?,
            HostPattern::Under(suffix) => write!(f, "*.{suffix}")?,
            HostPattern::Name(name) => f.write_str(name)?,
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            HostPattern::Ip(ip) => write!(f, "{ip}")?,
        }
        match self.port {
            None => f.write_str(":*")?,
            Some(port) if port != self.scheme.default_port() => write!(f, ":{port}")?,
            Some(_) => {}
        }
        Ok(())
    }
}

/// Whether `ip` is a public unicast address: not loopback, unspecified,
/// link-local (169.254.0.0/16 with the cloud metadata address, fe80::/10),
/// private (10/8, 172.16/12, 192.168/16, fc00::/7: where pod and service
/// networks live), shared (100.64/10), multicast, broadcast or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if v6.is_loopback() || v6.is_unspecified() {
                return false;
            }
            if let Some(v4) = v6.to_ipv4_mapped().or_else(|| embedded_v4(v6)) {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_multicast()
                // link-local fe80::/10, site-local fec0::/10, unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] & 0xfe00) == 0xfc00
                // NAT64 64:ff9b::/96 and 64:ff9b:1::/48
                || (s[0] == 0x64 && s[1] == 0xff9b)
                // Teredo 2001::/32, documentation 2001:db8::/32
                || (s[0] == 0x2001 && (s[1] == 0 || s[1] == 0xdb8))
                // discard-only 100::/64
                || (s[0] == 0x100 && s[1..4] == [0, 0, 0]))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_link_local()
        || ip.is_private()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24 (protocol assignments), 192.88.99.0/24 (6to4 relay),
        // 198.18.0.0/15 (benchmarking)
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 88 && c == 99)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

/// The IPv4 address inside an IPv4-compatible (`::a.b.c.d`) or 6to4
/// (`2002:AABB:CCDD::/48`) address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if s[..6] == [0; 6] {
        Some(v4(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(v4(s[1], s[2]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        match Endpoint::parse(s) {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        }
    }

    fn host(s: &str) -> Host {
        match Host::parse(s) {
            Some(h) => h,
            None => panic!("{s}"),
        }
    }

    #[test]
    fn parses_and_prints() {
        for (text, printed) in [
            ("https://api.example.com", "https://api.example.com"),
            ("api.example.com", "https://api.example.com"),
            ("HTTPS://API.Example.com:443/", "https://api.example.com"),
            ("http://*.example.com:8080", "http://*.example.com:8080"),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
            ("http://[::1]:9000", "http://[::1]:9000"),
            ("https://*", "https://*"),
            ("http://*:*", "http://*:*"),
        ] {
            assert_eq!(ep(text).to_string(), printed, "{text}");
        }
        for bad in [
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://*.",
            "https://*.127.0.0.1",
            "https://[::1",
            "https://exa mple.com",
            "https://",
            "http://2130706433",
            "http://127.1",
            "http://0x7f.1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matches_scheme_host_and_port() {
        let under = ep("https://*.example.com");
        assert!(under.matches(Scheme::Https, &host("a.example.com"), 443));
        assert!(under.matches(Scheme::Https, &host("a.b.example.com"), 443));
        assert!(!under.matches(Scheme::Https, &host("example.com"), 443));
        assert!(!under.matches(Scheme::Https, &host("badexample.com"), 443));
        assert!(!under.matches(Scheme::Http, &host("a.example.com"), 443));
        assert!(!under.matches(Scheme::Https, &host("a.example.com"), 8443));
        let any = ep("http://*");
        assert!(any.matches(Scheme::Http, &host("anything.test"), 80));
        assert!(!any.matches(Scheme::Http, &host("10.0.0.1"), 80));
        let ip = ep("http://127.0.0.1:8080");
        assert!(ip.matches(Scheme::Http, &host("127.0.0.1"), 8080));
        assert!(!ip.matches(Scheme::Http, &host("localhost"), 8080));
        assert!(!ip.matches(Scheme::Http, &host("127.0.0.2"), 8080));
        assert!(ep("http://[::1]:80").matches(Scheme::Http, &host("[::1]"), 80));
        // Addresses written as names are addresses, or nothing.
        assert_eq!(host("127.0.0.1."), Host::Ip("127.0.0.1".parse().unwrap()));
        assert!(!any.matches(Scheme::Http, &host("169.254.169.254."), 80));
        for numeric in ["2130706433", "127.1", "0x7f.1", "0177.0.0.1", "1.2.3.0x4"] {
            assert_eq!(Host::parse(numeric), None, "{numeric}");
        }
        let any_port = ep("http://*:*");
        assert!(any_port.matches(Scheme::Http, &host("a.test"), 8080));
        assert!(any_port.matches(Scheme::Http, &host("a.test"), 80));
        assert!(!any_port.matches(Scheme::Https, &host("a.test"), 443));
    }

    #[test]
    fn coverage() {
        assert!(ep("https://*").covers(&ep("https://*.example.com")));
        assert!(ep("https://*").covers(&ep("https://a.example.com")));
        assert!(!ep("https://*").covers(&ep("https://10.0.0.1")));
        assert!(ep("https://*.example.com").covers(&ep("https://*.a.example.com")));
        assert!(ep("https://*.example.com").covers(&ep("https://a.example.com")));
        assert!(!ep("https://*.example.com").covers(&ep("https://example.com")));
        assert!(!ep("https://a.example.com").covers(&ep("https://*.example.com")));
        assert!(!ep("https://a.example.com").covers(&ep("http://a.example.com")));
        assert!(ep("https://*:*").covers(&ep("https://*:8443")));
        assert!(ep("https://*:*").covers(&ep("https://*")));
        assert!(!ep("https://*").covers(&ep("https://*:*")));
    }

    #[test]
    fn public_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2001::1",
            "fec0::1",
            "100::1",
            "192.0.0.8",
            "198.18.0.1",
        ] {
            let ip: IpAddr = match private.parse() {
                Ok(ip) => ip,
                Err(e) => panic!("{private}: {e}"),
            };
            assert!(!is_public(ip), "{private}");
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "2002:5db8:d822::1",
        ] {
            let ip: IpAddr = match public.parse() {
                Ok(ip) => ip,
                Err(e) => panic!("{public}: {e}"),
            };
            assert!(is_public(ip), "{public}");
        }
    }
}
