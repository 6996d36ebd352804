//! NetFlow v9 and IPFIX datagrams into [`FlowRow`]s, decoded with `netflow_parser`.
//!
//! Templates are per exporter, so the collector keeps one parser per exporter address, at
//! most [`EXPORTERS_MAX`]; past it the least recently heard one is forgotten (its next
//! data waits for its next template, as after a restart of the exporter).
//!
//! Fields are read by their information-element number, the same in v9 and IPFIX for
//! these: bytes (1), packets (2), protocol (4), TCP flags (6), ports (7, 11), IPv4 (8, 12)
//! and IPv6 (27, 28) addresses; times as flow start/end in seconds (150, 151) or
//! milliseconds (152, 153), or relative to the exporter's boot (22, 21) with the v9
//! header's uptime or IPFIX's `systemInitTimeMilliseconds` (160) from options data
//! (32-bit, so taken modulo 2^32 as signed offsets).
//! NetFlow v5/v7 are not taken (no templates, no IPv6); they are counted as refused.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use netflow_parser::variable_versions::field_value::FieldValue;
use netflow_parser::variable_versions::ipfix::{FlowSetBody as IpfixBody, IPFix};
use netflow_parser::variable_versions::v9::{FlowSetBody as V9Body, V9};
use netflow_parser::{NetflowPacket, NetflowParser};

use crate::flow::{community_id, FlowRow};

/// Exporters whose templates are kept.
pub const EXPORTERS_MAX: usize = 1_024;
/// Largest datagram taken (a UDP datagram cannot be larger).
pub const DATAGRAM_BYTES_MAX: usize = 65_535;

#[derive(Default)]
struct Exporter {
    parser: NetflowParser,
    /// IPFIX `systemInitTimeMilliseconds`, once the exporter sent it.
    sys_init_ms: Option<u64>,
    last_heard: u64,
}

/// What one datagram gave.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub flows: Vec<FlowRow>,
    /// Why (part of) the datagram was not read, if it was not.
    pub error: Option<String>,
    /// Data records that arrived before their template.
    pub waiting_for_template: usize,
}

#[derive(Default)]
pub struct Collector {
    exporters: HashMap<SocketAddr, Exporter>,
    clock: u64,
}

/// A record's fields by information-element number.
struct Fields<'a>(Vec<(u16, &'a FieldValue)>);

impl<'a> Fields<'a> {
    fn get(&self, id: u16) -> Option<&'a FieldValue> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| *v)
    }

    fn num(&self, id: u16) -> Option<u64> {
        self.get(id)?.as_u64()
    }

    fn ip(&self, v4: u16, v6: u16) -> Option<IpAddr> {
        [v4, v6]
            .iter()
            .find_map(|&id| IpAddr::try_from(self.get(id)?).ok())
    }

    fn flags(&self) -> u16 {
        match self.get(6) {
            Some(FieldValue::TcpControlBits(b, _)) => u16::from(*b),
            Some(v) => v.as_u16().unwrap_or(0),
            None => 0,
        }
    }
}

/// Epoch milliseconds of a flow's start and end.
struct Clock {
    /// v9: (header seconds, uptime ms); IPFIX: (export seconds, None).
    export_secs: u64,
    uptime_ms: Option<u64>,
    sys_init_ms: Option<u64>,
}

impl Clock {
    fn times(&self, f: &Fields) -> (u64, u64) {
        let export_ms = self.export_secs * 1000;
        let absolute = |ms: u16, s: u16| f.num(ms).or_else(|| f.num(s).map(|x| x * 1000));
        // Uptimes are 32-bit milliseconds and wrap (every 49.7 days, and an exporter that
        // replays old packets reports times "before" its start): differences are taken
        // modulo 2^32, as signed offsets.
        let relative = |id: u16| {
            let t = f.num(id)? as u32;
            match (self.uptime_ms, self.sys_init_ms) {
                (Some(up), _) => {
                    let ago = (up as u32).wrapping_sub(t) as i32 as i64;
                    Some((export_ms as i64 - ago).max(0) as u64)
                }
                (None, Some(init)) => Some((init as i64 + t as i32 as i64).max(0) as u64),
                (None, None) => None,
            }
        };
        let start = absolute(152, 150)
            .or_else(|| relative(22))
            .unwrap_or(export_ms);
        let end = absolute(153, 151).or_else(|| relative(21)).unwrap_or(start);
        (start, end.max(start))
    }
}

fn row(f: &Fields, clock: &Clock, exporter: SocketAddr, version: i32) -> Option<FlowRow> {
    let src = f.ip(8, 27)?;
    let dst = f.ip(12, 28)?;
    let proto = f.get(4).and_then(|v| v.as_u8()).unwrap_or(0);
    let sp = f.get(7).and_then(|v| v.as_u16()).unwrap_or(0);
    let dp = f.get(11).and_then(|v| v.as_u16()).unwrap_or(0);
    let (start, end) = clock.times(f);
    let ns = |ms: u64| (ms.min(i64::MAX as u64 / 1_000_000) * 1_000_000) as i64;
    Some(FlowRow {
        start_ns: ns(start),
        end_ns: ns(end),
        exporter: exporter.ip().to_string(),
        version,
        src_addr: src.to_string(),
        src_port: sp as i32,
        dst_addr: dst.to_string(),
        dst_port: dp as i32,
        protocol: proto as i32,
        bytes: f.num(1).unwrap_or(0).min(i64::MAX as u64) as i64,
        packets: f.num(2).unwrap_or(0).min(i64::MAX as u64) as i64,
        tcp_flags: f.flags() as i32,
        community_id: community_id(proto, src, sp, dst, dp),
    })
}

impl Collector {
    /// Decodes one datagram from `from`.
    pub fn decode(&mut self, from: SocketAddr, datagram: &[u8]) -> Decoded {
        self.clock += 1;
        if !self.exporters.contains_key(&from) && self.exporters.len() >= EXPORTERS_MAX {
            if let Some(oldest) = self
                .exporters
                .iter()
                .min_by_key(|(_, e)| e.last_heard)
                .map(|(a, _)| *a)
            {
                self.exporters.remove(&oldest);
            }
        }
        let ex = self.exporters.entry(from).or_default();
        ex.last_heard = self.clock;
        let parsed = ex.parser.parse_bytes(datagram);
        let mut out = Decoded {
            error: parsed.error.map(|e| e.to_string()),
            ..Default::default()
        };
        for p in &parsed.packets {
            match p {
                NetflowPacket::V9(v9) => v9_rows(v9, from, &mut out),
                NetflowPacket::IPFix(ipfix) => ipfix_rows(ipfix, from, ex, &mut out),
                _ => {
                    out.error.get_or_insert_with(|| {
                        "NetFlow v5/v7 is not collected; export v9 or IPFIX".into()
                    });
                }
            }
        }
        out
    }
}

fn v9_rows(v9: &V9, from: SocketAddr, out: &mut Decoded) {
    let clock = Clock {
        export_secs: v9.header.unix_secs as u64,
        uptime_ms: Some(v9.header.sys_up_time as u64),
        sys_init_ms: None,
    };
    for fs in &v9.flowsets {
        match &fs.body {
            V9Body::Data(d) => {
                for rec in &d.fields {
                    let f = Fields(rec.iter().map(|(k, v)| (u16::from(*k), v)).collect());
                    out.flows.extend(row(&f, &clock, from, 9));
                }
            }
            V9Body::NoTemplate(_) => out.waiting_for_template += 1,
            _ => {}
        }
    }
}

fn ipfix_id(f: &netflow_parser::variable_versions::ipfix::lookup::IPFixField) -> u16 {
    use netflow_parser::variable_versions::ipfix::lookup::IANAIPFixField as F;
    use netflow_parser::variable_versions::ipfix::lookup::IPFixField;
    // Only the elements read here; enterprise fields never carry them.
    match f {
        IPFixField::IANA(x) => match x {
            F::OctetDeltaCount => 1,
            F::PacketDeltaCount => 2,
            F::ProtocolIdentifier => 4,
            F::TcpControlBits => 6,
            F::SourceTransportPort => 7,
            F::SourceIpv4address => 8,
            F::DestinationTransportPort => 11,
            F::DestinationIpv4address => 12,
            F::FlowEndSysUpTime => 21,
            F::FlowStartSysUpTime => 22,
            F::SourceIpv6address => 27,
            F::DestinationIpv6address => 28,
            F::FlowStartSeconds => 150,
            F::FlowEndSeconds => 151,
            F::FlowStartMilliseconds => 152,
            F::FlowEndMilliseconds => 153,
            F::SystemInitTimeMilliseconds => 160,
            _ => u16::MAX,
        },
        _ => u16::MAX,
    }
}

fn ipfix_rows(ipfix: &IPFix, from: SocketAddr, ex: &mut Exporter, out: &mut Decoded) {
    for fs in &ipfix.flowsets {
        if let IpfixBody::OptionsData(d) = &fs.body {
            for rec in &d.fields {
                let f = Fields(rec.iter().map(|(k, v)| (ipfix_id(k), v)).collect());
                if let Some(t) = f.num(160) {
                    ex.sys_init_ms = Some(t);
                }
            }
        }
    }
    let clock = Clock {
        export_secs: ipfix.header.export_time as u64,
        uptime_ms: None,
        sys_init_ms: ex.sys_init_ms,
    };
    for fs in &ipfix.flowsets {
        match &fs.body {
            IpfixBody::Data(d) => {
                for rec in &d.fields {
                    let f = Fields(rec.iter().map(|(k, v)| (ipfix_id(k), v)).collect());
                    out.flows.extend(row(&f, &clock, from, 10));
                }
            }
            IpfixBody::V9Data(d) => {
                for rec in &d.fields {
                    let f = Fields(rec.iter().map(|(k, v)| (u16::from(*k), v)).collect());
                    out.flows.extend(row(&f, &clock, from, 10));
                }
            }
            IpfixBody::NoTemplate(_) => out.waiting_for_template += 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams softflowd 1.1.0 exported for one recorded TCP connection
    /// 10.1.2.3:40000 <-> 10.9.8.7:443 (8 packets: 5 from the client, 3 from the server).
    const V9: &[u8] = include_bytes!("../testdata/softflowd-v9.bin");
    const IPFIX: &[u8] = include_bytes!("../testdata/softflowd-ipfix.bin");

    fn exporter() -> SocketAddr {
        "127.0.0.1:9995".parse().unwrap()
    }

    #[test]
    fn recorded_v9_and_ipfix_exports_decode_to_both_directions_of_the_connection() {
        for (bytes, version) in [(V9, 9), (IPFIX, 10)] {
            let mut c = Collector::default();
            let d = c.decode(exporter(), bytes);
            assert_eq!(d.error, None, "v{version}");
            let mut flows = d.flows;
            flows.sort_by_key(|f| f.src_port);
            assert_eq!(flows.len(), 2, "v{version}: {flows:?}");
            let (back, out) = (&flows[0], &flows[1]);
            assert_eq!(
                (
                    out.src_addr.as_str(),
                    out.src_port,
                    out.dst_addr.as_str(),
                    out.dst_port,
                    out.protocol
                ),
                ("10.1.2.3", 40000, "10.9.8.7", 443, 6)
            );
            assert_eq!((out.packets, back.packets), (5, 3), "v{version}");
            assert_eq!(
                (out.bytes, back.bytes),
                (5 * 40 + 100, 3 * 40 + 200),
                "v{version}"
            );
            assert_eq!(out.version, version);
            assert_eq!(
                out.community_id, back.community_id,
                "one connection, one id"
            );
            // Recorded on 2026-12-02 from packets stamped 5 s before the export.
            let start_s = out.start_ns / 1_000_000_000;
            assert!(
                (1_796_186_000..1_796_187_000).contains(&start_s),
                "v{version}: {start_s}"
            );
            assert!(out.end_ns >= out.start_ns);
        }
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let mut c = Collector::default();
        for bytes in [
            &b""[..],
            &[0, 9, 0, 1],
            &[0, 10, 0, 20, 1, 2, 3],
            &V9[..30],
            &[0xff; 200],
        ] {
            let d = c.decode(exporter(), bytes);
            assert!(d.flows.is_empty());
        }
    }
}
