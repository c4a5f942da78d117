//! Who may drive the admin API from a browser: checked before the token, so
//! that a web page the operator visits cannot fire a "simple" cross-origin
//! `POST` (which needs no preflight) or reach it through DNS rebinding.
//!
//! Like Caddy's admin endpoint (its `checkHost`/`checkOrigin`), a request is
//! refused when
//! - it carries an `Origin` that `admin.allowed_origins` does not list, or
//!   `Sec-Fetch-Site: cross-site`/`same-site` without such an allowed origin;
//! - its host (`Host`, or the HTTP/2 authority) is not one the admin answers
//!   to (see [`Hosts`]).
//!
//! Tools that send no `Origin` (curl, `kiln reload`, scripts) are not
//! affected.

use std::net::{IpAddr, SocketAddr};

use axum::http::uri::Authority;
use axum::http::{HeaderMap, Uri, header};
use kiln_config::AdminConfig;

/// The names the admin API answers to, besides `admin.allowed_hosts`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Hosts {
    /// kiln's own admin listener bound at this address: its IP,
    /// `localhost` and loopback IPs (any port). On a non-loopback address
    /// (a token is required there) an empty `allowed_hosts` means any host.
    Listener(SocketAddr),
    /// Nested in an embedder's router, whose public names kiln cannot know:
    /// any host unless `allowed_hosts` is set, then only those, `localhost`
    /// and loopback IPs.
    Embedded,
}

/// Why a request is refused, or `None` when it may go on to authentication.
pub(crate) fn refusal(
    headers: &HeaderMap,
    uri: &Uri,
    admin: &AdminConfig,
    hosts: Hosts,
) -> Option<String> {
    let origin = headers.get(header::ORIGIN);
    let allowed_origin = match origin {
        None => false,
        Some(origin) => {
            let allowed = admin
                .allowed_origins
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()));
            if !allowed {
                return Some(format!(
                    "Origin {} is not in admin.allowed_origins: the admin API refuses requests from web pages it does not know",
                    String::from_utf8_lossy(origin.as_bytes())
                ));
            }
            true
        }
    };
    if let Some(site) = headers.get("sec-fetch-site")
        && (site == "cross-site" || site == "same-site")
        && !allowed_origin
    {
        return Some(format!(
            "Sec-Fetch-Site: {} without an Origin in admin.allowed_origins: the admin API refuses requests from other sites",
            String::from_utf8_lossy(site.as_bytes())
        ));
    }
    let authority = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => match headers.get(header::HOST).map(|host| host.to_str()) {
            // No host at all: not a browser, so not a rebinding.
            None => return None,
            Some(Ok(host)) => host,
            Some(Err(_)) => return Some("Host is not readable text".to_owned()),
        },
    };
    // Without its port (an IPv6 literal keeps its brackets); a host that is
    // no authority is taken whole, and is then a name kiln answers to only
    // where any is.
    let parsed = Authority::try_from(authority).ok();
    let name = parsed.as_ref().map_or(authority, Authority::host);
    (!host_allowed(name, admin, hosts)).then(|| {
        format!(
            "Host {authority} is not this admin listener's address, localhost, a loopback IP or in admin.allowed_hosts"
        )
    })
}

/// Whether `name`, a host without its port (an IPv6 literal in brackets),
/// is one the admin API answers to.
fn host_allowed(name: &str, admin: &AdminConfig, hosts: Hosts) -> bool {
    let (own_ip, any_when_unset) = match hosts {
        Hosts::Listener(own) => (Some(own.ip()), !own.ip().is_loopback()),
        Hosts::Embedded => (None, true),
    };
    let ip = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    (any_when_unset && admin.allowed_hosts.is_empty())
        || name.eq_ignore_ascii_case("localhost")
        || ip.is_some_and(|ip| ip.is_loopback() || Some(ip) == own_ip)
        || admin
            .allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origins: &[&str], hosts: &[&str]) -> AdminConfig {
        let mut config = AdminConfig::default();
        config.allowed_origins = origins.iter().map(|o| o.to_string()).collect();
        config.allowed_hosts = hosts.iter().map(|h| h.to_string()).collect();
        config
    }

    fn check(host: &str, config: &AdminConfig, hosts: Hosts) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        refusal(&headers, &Uri::from_static("/reload"), config, hosts).is_none()
    }

    #[test]
    fn hosts_a_loopback_listener_answers_to() {
        let own = Hosts::Listener("127.0.0.1:9090".parse().unwrap());
        let none = config(&[], &[]);
        for host in [
            "127.0.0.1:9090",
            "localhost",
            "LocalHost:1",
            "127.0.0.2:9090",
            "[::1]:9090",
            "[::1]",
        ] {
            assert!(check(host, &none, own), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9090",
            "10.0.0.1:9090",
            "[::2]:9090",
            "localhost.evil",
        ] {
            assert!(!check(host, &none, own), "{host}");
        }
        let named = config(&[], &["kiln.internal", "[fd00::1]"]);
        assert!(check("kiln.internal:9090", &named, own));
        assert!(check("[fd00::1]:9090", &named, own));
    }

    #[test]
    fn public_listener_and_embedded_answer_any_host_until_hosts_are_named() {
        let public = Hosts::Listener("0.0.0.0:9090".parse().unwrap());
        let none = config(&[], &[]);
        let named = config(&[], &["kiln.internal"]);
        for hosts in [public, Hosts::Embedded] {
            assert!(check("anything.example", &none, hosts));
            assert!(!check("anything.example", &named, hosts));
            assert!(check("kiln.internal", &named, hosts));
            assert!(check("localhost:3000", &named, hosts));
        }
    }

    #[test]
    fn http2_authority_is_checked_like_host() {
        let own = Hosts::Listener("127.0.0.1:9090".parse().unwrap());
        let uri = Uri::from_static("http://evil.example:9090/reload");
        assert!(refusal(&HeaderMap::new(), &uri, &config(&[], &[]), own).is_some());
    }
}
