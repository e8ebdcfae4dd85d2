//! Which addresses deliveries may reach, and the connector that enforces it.
//!
//! SPEC §6 "Targets": a callback must not turn cb into a tool for reaching the platform's own
//! network. The check runs on every address a name resolves to, at connect time, inside the
//! connector — so a name that resolved to a public address when the callback was configured
//! and to `127.0.0.1` now (DNS rebinding) is still refused, and an IP literal in the URL takes
//! the same path as a name. The refusal is an error type of its own, [`Refused`], so the
//! delivery can record it as `Outcome::TargetRefused` with the reason.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why an address is not public, or `None` if it is: the table of SPEC §6 "Targets"
/// (IANA special-purpose registries, IPv4 and IPv6).
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "in 0.0.0.0/8 (this network)",
        (10, ..) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared address space / CGNAT (100.64.0.0/10)",
        (127, ..) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local (169.254.0.0/16)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) => "documentation (192.0.2.0/24)",
        (192, 88, 99) => "6to4 relay anycast (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (198, 51, 100) => "documentation (198.51.100.0/24)",
        (203, 0, 113) => "documentation (203.0.113.0/24)",
        (224..=239, ..) => "multicast (224.0.0.0/4)",
        (240..=255, ..) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        // ::ffff:a.b.c.d reaches a.b.c.d.
        return v4_reason(v4).map(|_| "IPv4-mapped form of a non-public IPv4 address");
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // 64:ff9b::/96, the well-known NAT64 prefix, reaches the embedded IPv4 address.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return v4_reason(v4).map(|_| "NAT64 form (64:ff9b::/96) of a non-public IPv4 address");
    }
    if s[0] == 0x2002 {
        // 6to4 embeds an IPv4 address in bits 16..48.
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return v4_reason(v4).map(|_| "6to4 form (2002::/16) of a non-public IPv4 address");
    }
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified (::)",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback (::1)",
        [0, 0, 0, 0, 0, 0, ..] => "IPv4-compatible (::/96, deprecated)",
        [0x64, 0xff9b, 1, ..] => "local-use NAT64 (64:ff9b:1::/48)",
        [0x100, 0, 0, 0, ..] => "discard-only (100::/64)",
        [0x2001, 0, ..] => "Teredo (2001::/32)",
        [0x2001, 0xdb8, ..] => "documentation (2001:db8::/32)",
        [0x2001, 0x0002, 0, ..] => "benchmarking (2001:2::/48)",
        [0x2001, 0x10..=0x2f, ..] => "ORCHID (2001:10::/28, 2001:20::/28)",
        [x, ..] if x & 0xfff0 == 0x3ff0 => "documentation (3fff::/20)",
        [0x5f00, ..] => "SRv6 SIDs (5f00::/16)",
        [x, ..] if x & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10, deprecated)",
        [x, ..] if x & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        // Only 2000::/3 is global unicast.
        [x, ..] if x & 0xe000 != 0x2000 => "outside global unicast (2000::/3)",
        _ => return None,
    })
}

/// A delivery target resolved only to addresses it may not reach.
#[derive(Debug, thiserror::Error)]
#[error("refused to connect to {host}: {addr} is {reason} (start cbd with --allow-private-targets to allow it)")]
pub struct Refused {
    /// The host as the URL names it.
    pub host: String,
    /// The first refused address.
    pub addr: IpAddr,
    /// Why it is not public.
    pub reason: &'static str,
}

/// The TCP connector under the TLS layer: resolves the host, drops every address the policy
/// refuses, and connects to the rest in order.
#[derive(Clone, Debug)]
pub struct GuardedConnector {
    /// Connect to non-public addresses too (`--allow-private-targets`).
    pub allow_private: bool,
}

impl GuardedConnector {
    async fn connect(self, uri: Uri) -> Result<TokioIo<TcpStream>, BoxError> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL without a host"))?;
        // `[::1]` arrives bracketed.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("resolving {host}: {e}")))?
                .collect(),
        };
        let mut refused = None;
        let mut last_error = None;
        for addr in addrs {
            if !self.allow_private {
                if let Some(reason) = non_public_reason(addr.ip()) {
                    refused.get_or_insert(Refused {
                        host: host.clone(),
                        addr: addr.ip(),
                        reason,
                    });
                    continue;
                }
            }
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Small request/response exchanges: do not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok(TokioIo::new(stream));
                }
                Err(e) => last_error = Some(io::Error::new(e.kind(), format!("{addr}: {e}"))),
            }
        }
        match (last_error, refused) {
            (Some(e), _) => Err(e.into()),
            (None, Some(refused)) => Err(refused.into()),
            (None, None) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolved to no address"),
            )
            .into()),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        non_public_reason(s.parse().unwrap()).is_some()
    }

    #[test]
    fn non_public_v4() {
        for a in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(refused(a), "{a} should be refused");
        }
    }

    #[test]
    fn public_v4() {
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.3.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert!(!refused(a), "{a} should be allowed");
        }
    }

    #[test]
    fn non_public_v6_and_embedded_v4() {
        for a in [
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2001:2::1",
            "2001:20::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "4000::1",
        ] {
            assert!(refused(a), "{a} should be refused");
        }
    }

    #[test]
    fn public_v6_and_embedded_v4() {
        for a in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!refused(a), "{a} should be allowed");
        }
    }

    #[tokio::test]
    async fn connector_refuses_loopback_literals_and_names() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
            format!("http://[::1]:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
        ] {
            let err = GuardedConnector {
                allow_private: false,
            }
            .connect(url.parse().unwrap())
            .await
            .unwrap_err();
            assert!(err.downcast_ref::<Refused>().is_some(), "{url}: {err}");
        }
        let ok = GuardedConnector {
            allow_private: true,
        }
        .connect(format!("http://127.0.0.1:{port}/").parse().unwrap())
        .await;
        assert!(ok.is_ok());
    }
}
