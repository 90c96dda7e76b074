//! coturn's STUN tools against our servers on loopback:
//! - `turnutils_stunclient` gets its server-reflexive address (XOR-MAPPED-ADDRESS) from
//!   `stun-server` and from `turn-server` (a TURN server answers Binding too);
//! - `turnutils_natdiscovery -m -f` runs the RFC 5780 mapping and filtering tests against
//!   `stun-server --alt-ip 127.0.0.2`. On loopback there is no NAT, so the verdict must be
//!   endpoint-independent mapping and filtering, and the responses must come from the
//!   addresses RFC 5780 prescribes (OTHER-ADDRESS, CHANGE-REQUEST).
//!
//! Output lines parsed (coturn 4.6, stdout):
//! ```text
//! 0: : IPv4. UDP reflexive addr: 127.0.0.1:50617
//! 0: : IPv4. Response origin: : 127.0.0.2:45701
//! 0: : IPv4. Other addr: : 127.0.0.2:45701
//! NAT with Endpoint Independent Mapping!
//! NAT with Endpoint Independent Filtering!
//! ```

mod common;

use common::{
    free_udp_tcp_port, free_udp_tcp_port_pair, require_tool, run_with_timeout, wait_until,
    ServerGuard, ToolOutput,
};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

const PRIMARY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const ALT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// natdiscovery waits 3 s per unanswered request; a full `-m -f` run is far below this.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Every `SocketAddr` printed after `label` in the tool's output, in order.
fn addrs_after(out: &str, label: &str) -> Vec<SocketAddr> {
    out.lines()
        .filter_map(|l| {
            let rest = &l[l.find(label)? + label.len()..];
            rest.trim_start_matches([':', ' ']).trim().parse().ok()
        })
        .collect()
}

/// `(RESPONSE-ORIGIN, OTHER-ADDRESS)` of each "RFC 5780 response N" block in the output.
fn rfc5780_responses(out: &str) -> Vec<(SocketAddr, SocketAddr)> {
    out.split("RFC 5780 response")
        .skip(1)
        .filter_map(|block| {
            Some((
                *addrs_after(block, "Response origin:").first()?,
                *addrs_after(block, "Other addr:").first()?,
            ))
        })
        .collect()
}

fn run_stunclient(port: u16) -> (ToolOutput, String) {
    let tool = require_tool("turnutils_stunclient");
    let args = ["-p".to_string(), port.to_string(), PRIMARY_IP.to_string()];
    let out = run_with_timeout(Command::new(tool).args(&args), TIMEOUT);
    let shown = format!(
        "turnutils_stunclient {}\nexit {:?} after {:?}\n{}",
        args.join(" "),
        out.status,
        out.elapsed,
        out.combined()
    );
    (out, shown)
}

/// Asserts that stunclient learnt a reflexive address 127.0.0.1:<ephemeral port> and did not
/// see an error response.
fn assert_reflexive(out: &ToolOutput, shown: &str, server_port: u16) {
    assert!(!out.timed_out(), "stunclient hung: {shown}");
    assert!(
        !out.stdout.contains("The response is"),
        "stunclient got a bad response: {shown}"
    );
    let reflexive = addrs_after(&out.stdout, "UDP reflexive addr:");
    assert!(!reflexive.is_empty(), "no reflexive address in: {shown}");
    for addr in reflexive {
        assert_eq!(addr.ip(), IpAddr::V4(PRIMARY_IP), "{shown}");
        assert_ne!(addr.port(), 0, "{shown}");
        assert_ne!(
            addr.port(),
            server_port,
            "reflected the server's port: {shown}"
        );
    }
}

#[test]
fn stunclient_gets_reflexive_address_from_stun_server() {
    let port = free_udp_tcp_port();
    let server = ServerGuard::stun_server(&["--listen", &format!("{PRIMARY_IP}:{port}")]);
    let (out, shown) = run_stunclient(port);
    assert_reflexive(&out, &shown, port);
    let counted = wait_until(Duration::from_secs(5), || {
        server.metric("stun_binding_requests_total", &[]) >= 1.0
    });
    assert!(
        counted,
        "stun_binding_requests_total did not move:\n{}",
        server.scrape_metrics()
    );
}

#[test]
fn stunclient_gets_reflexive_address_from_turn_server() {
    let port = free_udp_tcp_port();
    let _server = ServerGuard::turn_server(&[
        "--listen",
        &format!("{PRIMARY_IP}:{port}"),
        "--relay-ip",
        "127.0.0.1",
        "--user",
        "u:p",
    ]);
    let (out, shown) = run_stunclient(port);
    assert_reflexive(&out, &shown, port);
}

#[test]
fn natdiscovery_sees_endpoint_independent_mapping_and_filtering() {
    let ips = [IpAddr::V4(PRIMARY_IP), IpAddr::V4(ALT_IP)];
    let port = free_udp_tcp_port_pair(&ips);
    let alt_port = port + 1;
    let server = ServerGuard::stun_server(&[
        "--listen",
        &format!("{PRIMARY_IP}:{port}"),
        "--alt-ip",
        &ALT_IP.to_string(),
    ]);

    let tool = require_tool("turnutils_natdiscovery");
    let args = [
        "-m".to_string(),
        "-f".into(),
        "-p".into(),
        port.to_string(),
        PRIMARY_IP.to_string(),
    ];
    let out = run_with_timeout(Command::new(tool).args(&args), TIMEOUT);
    let shown = format!(
        "turnutils_natdiscovery {}\nexit {:?} after {:?}\n{}\n--- server log ---\n{}",
        args.join(" "),
        out.status,
        out.elapsed,
        out.combined(),
        server.log()
    );
    assert!(out.success(), "natdiscovery failed: {shown}");
    for verdict in [
        "NAT with Endpoint Independent Mapping!",
        "NAT with Endpoint Independent Filtering!",
    ] {
        assert!(out.stdout.contains(verdict), "no `{verdict}` in: {shown}");
    }
    assert!(
        !out.stdout.contains("STUN receive timeout"),
        "a request went unanswered: {shown}"
    );

    // natdiscovery sends four requests, in this order:
    // mapping   1: to the primary address;
    //           2: to OTHER-ADDRESS's IP with the primary port;
    // filtering 3: to the primary address;
    //           4: to the primary address with CHANGE-REQUEST (change IP and port), so the
    //              answer comes from the alternate IP and port.
    // RFC 5780 §7.3: RESPONSE-ORIGIN is the address the answer was sent from; OTHER-ADDRESS is
    // where an answer with both changes would come from, relative to the address the request
    // was received on.
    let addr = |ip: Ipv4Addr, port: u16| SocketAddr::new(IpAddr::V4(ip), port);
    let expected = vec![
        (addr(PRIMARY_IP, port), addr(ALT_IP, alt_port)),
        (addr(ALT_IP, port), addr(PRIMARY_IP, alt_port)),
        (addr(PRIMARY_IP, port), addr(ALT_IP, alt_port)),
        (addr(ALT_IP, alt_port), addr(ALT_IP, alt_port)),
    ];
    assert_eq!(
        rfc5780_responses(&out.stdout),
        expected,
        "(RESPONSE-ORIGIN, OTHER-ADDRESS) of the four answers: {shown}"
    );
    let reflexive: BTreeSet<IpAddr> = addrs_after(&out.stdout, "UDP reflexive addr:")
        .into_iter()
        .map(|a| a.ip())
        .collect();
    assert_eq!(
        reflexive,
        BTreeSet::from([IpAddr::V4(PRIMARY_IP)]),
        "{shown}"
    );
    let counted = wait_until(Duration::from_secs(5), || {
        server.metric("stun_binding_requests_total", &[]) >= 4.0
    });
    assert!(
        counted,
        "stun_binding_requests_total should count the 4 requests:\n{}",
        server.scrape_metrics()
    );
}

#[test]
fn parses_tool_addresses() {
    let out = "0: : IPv4. Response origin: : 127.0.0.2:45701\n\
        0: : IPv4. UDP reflexive addr: 127.0.0.1:50617\n\
        RFC 5780 response 1\n";
    assert_eq!(
        addrs_after(out, "Response origin:"),
        vec!["127.0.0.2:45701".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        addrs_after(out, "UDP reflexive addr:"),
        vec!["127.0.0.1:50617".parse::<SocketAddr>().unwrap()]
    );
    assert!(addrs_after(out, "Other addr:").is_empty());
    let blocks = "RFC 5780 response 1\n\
        0: : IPv4. Response origin: : 127.0.0.1:3478\n\
        0: : IPv4. Response origin: : 127.0.0.1:3478\n\
        0: : IPv4. Other addr: : 127.0.0.2:3479\n\
        RFC 5780 response 2\n\
        0: : IPv4. Response origin: : 127.0.0.2:3479\n\
        The response is an error 400 (Bad Request)\n";
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(
        rfc5780_responses(blocks),
        vec![(addr("127.0.0.1:3478"), addr("127.0.0.2:3479"))]
    );
}
