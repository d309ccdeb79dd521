//! Per-flow policy: which flows are compared (the default) and which pass unchecked.
//!
//! A rule matches a transport protocol (TCP or UDP) and a port on either end of the
//! flow, optionally together with one address on that same end. Flows of a `pass`
//! rule are not compared: the primary's output is released as it arrives (counted in
//! [`super::EngineStats::released_by_policy`] and per rule), the secondary's is
//! discarded (counted as [`super::DropReason::Policy`]), never held. This is for
//! output known to differ between the VMs without mattering (an NTP reply, a
//! metrics scrape) that would otherwise cost a checkpoint each time.
//!
//! When rules overlap, a rule with an address wins over one without.

use core::fmt;
use core::net::IpAddr;
use core::str::FromStr;

use crate::flow::{Endpoint, FlowKey, FlowProto};

/// What the engine does with a flow's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowPolicy {
    /// Compare both VMs' output and release only what matches (the default).
    Compare,
    /// Release the primary's output without comparing; discard the secondary's.
    Pass,
}

impl FlowPolicy {
    /// Stable lowercase name (`compare`, `pass`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Compare => "compare",
            Self::Pass => "pass",
        }
    }
}

impl FromStr for FlowPolicy {
    type Err = FlowPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "compare" => Ok(Self::Compare),
            "pass" => Ok(Self::Pass),
            other => Err(FlowPolicyError::Syntax(format!(
                "unknown policy {other:?}; use compare or pass"
            ))),
        }
    }
}

impl fmt::Display for FlowPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The protocols a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl MatchProto {
    const fn flow_proto(self) -> FlowProto {
        match self {
            Self::Tcp => FlowProto::Tcp,
            Self::Udp => FlowProto::Udp,
        }
    }

    /// Stable lowercase name (`tcp`, `udp`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Which flows a rule applies to. Written `PROTO:PORT` or `PROTO:ADDR:PORT`
/// (`udp:123`, `tcp:10.0.0.5:9100`, `tcp:[fd00::5]:9100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowMatch {
    /// Transport protocol.
    pub proto: MatchProto,
    /// Port on either end of the flow.
    pub port: u16,
    /// When set, the end with `port` must also have this address.
    pub addr: Option<IpAddr>,
}

impl FlowMatch {
    /// Whether `key` is one of the flows this rule names.
    #[must_use]
    pub fn matches(&self, key: &FlowKey) -> bool {
        if key.proto != self.proto.flow_proto() {
            return false;
        }
        let want = self.addr.map(|a| Endpoint::new(a, self.port).addr);
        [key.lo, key.hi]
            .iter()
            .any(|e| e.port == self.port && want.is_none_or(|a| a == e.addr))
    }
}

impl fmt::Display for FlowMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.proto.as_str();
        match self.addr {
            None => write!(f, "{proto}:{}", self.port),
            Some(IpAddr::V4(a)) => write!(f, "{proto}:{a}:{}", self.port),
            Some(IpAddr::V6(a)) => write!(f, "{proto}:[{a}]:{}", self.port),
        }
    }
}

impl FromStr for FlowMatch {
    type Err = FlowPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            FlowPolicyError::Syntax(format!(
                "{s:?}: {why}; write PROTO:PORT or PROTO:ADDR:PORT, e.g. udp:123, \
                 tcp:10.0.0.5:9100, tcp:[fd00::5]:9100"
            ))
        };
        let (proto, rest) = s.split_once(':').ok_or_else(|| bad("no protocol"))?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => MatchProto::Tcp,
            "udp" => MatchProto::Udp,
            _ => return Err(bad("the protocol is tcp or udp")),
        };
        let (addr, port) = match rest.rsplit_once(':') {
            None => (None, rest),
            Some((addr, port)) => {
                let addr = addr
                    .strip_prefix('[')
                    .and_then(|a| a.strip_suffix(']'))
                    .unwrap_or(addr);
                let ip: IpAddr = addr
                    .parse()
                    .map_err(|_| bad(&format!("{addr:?} is not an IP address")))?;
                (Some(ip), port)
            }
        };
        let port: u16 = port
            .parse()
            .map_err(|_| bad(&format!("{port:?} is not a port number")))?;
        Ok(Self { proto, port, addr })
    }
}

/// A policy for the flows one match names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowRule {
    /// Which flows.
    pub matcher: FlowMatch,
    /// What to do with them.
    pub policy: FlowPolicy,
}

/// A rule in force, with what it has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRuleState {
    /// The rule.
    pub rule: FlowRule,
    /// Primary frames released unchecked because of this rule.
    pub released_frames: u64,
    /// Bytes of those frames.
    pub released_bytes: u64,
    /// Secondary frames discarded because of this rule.
    pub discarded_frames: u64,
}

/// Why a policy could not be parsed or set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowPolicyError {
    /// A match or policy string is malformed.
    #[error("{0}")]
    Syntax(String),
    /// Setting the rule would exceed `EngineConfig::max_flow_rules`.
    #[error("{max} flow rules are in force already (max_flow_rules); remove one first")]
    TooManyRules {
        /// The limit.
        max: usize,
    },
}

/// The rules in force.
#[derive(Debug, Clone, Default)]
pub(crate) struct PolicyTable {
    rules: Vec<FlowRuleState>,
}

impl PolicyTable {
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub(crate) fn rules(&self) -> &[FlowRuleState] {
        &self.rules
    }

    /// Index of the rule deciding `key`: an address rule before a port-only one.
    pub(crate) fn lookup(&self, key: &FlowKey) -> Option<usize> {
        let mut port_only = None;
        for (i, r) in self.rules.iter().enumerate() {
            if r.rule.matcher.matches(key) {
                if r.rule.matcher.addr.is_some() {
                    return Some(i);
                }
                port_only.get_or_insert(i);
            }
        }
        port_only
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut FlowRuleState> {
        self.rules.get_mut(i)
    }

    /// Set the policy for one match, replacing a rule with the same match. A
    /// port-only `compare` rule is the default and is simply removed. Returns the
    /// policy the match had before.
    pub(crate) fn set(
        &mut self,
        rule: FlowRule,
        max: usize,
    ) -> Result<FlowPolicy, FlowPolicyError> {
        let existing = self
            .rules
            .iter()
            .position(|r| r.rule.matcher == rule.matcher);
        let before = existing.map_or(FlowPolicy::Compare, |i| self.rules[i].rule.policy);
        let is_default = rule.policy == FlowPolicy::Compare && rule.matcher.addr.is_none();
        match (existing, is_default) {
            (Some(i), true) => {
                self.rules.remove(i);
            }
            (Some(i), false) => {
                self.rules[i] = FlowRuleState::new(rule);
            }
            (None, true) => {}
            (None, false) => {
                if self.rules.len() >= max {
                    return Err(FlowPolicyError::TooManyRules { max });
                }
                self.rules.push(FlowRuleState::new(rule));
            }
        }
        Ok(before)
    }
}

impl FlowRuleState {
    fn new(rule: FlowRule) -> Self {
        Self {
            rule,
            released_frames: 0,
            released_bytes: 0,
            discarded_frames: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn key(proto: FlowProto, a: (Ipv4Addr, u16), b: (Ipv4Addr, u16)) -> FlowKey {
        FlowKey::new(
            [0, 0],
            proto,
            Endpoint::new(a.0.into(), a.1),
            Endpoint::new(b.0.into(), b.1),
        )
        .0
    }

    #[test]
    fn matches_parse_and_print() {
        for s in ["udp:123", "tcp:10.0.0.5:9100", "tcp:[fd00::5]:9100"] {
            let m: FlowMatch = s.parse().unwrap();
            assert_eq!(m.to_string(), s);
        }
        assert_eq!(
            "UDP:53".parse::<FlowMatch>().unwrap().proto,
            MatchProto::Udp
        );
        for bad in ["123", "icmp:1", "udp:70000", "udp:", "tcp:nohost:80", ""] {
            assert!(bad.parse::<FlowMatch>().is_err(), "{bad}");
        }
        assert_eq!("pass".parse(), Ok(FlowPolicy::Pass));
        assert!("drop".parse::<FlowPolicy>().is_err());
    }

    #[test]
    fn matching_uses_protocol_port_and_address_on_the_same_end() {
        let vm = Ipv4Addr::new(10, 0, 0, 5);
        let client = Ipv4Addr::new(10, 1, 0, 9);
        let ntp = key(FlowProto::Udp, (vm, 123), (client, 40000));
        let m: FlowMatch = "udp:123".parse().unwrap();
        assert!(m.matches(&ntp));
        assert!(!m.matches(&key(FlowProto::Tcp, (vm, 123), (client, 40000))));
        assert!(!m.matches(&key(FlowProto::Udp, (vm, 124), (client, 40000))));
        assert!(
            "udp:10.0.0.5:123"
                .parse::<FlowMatch>()
                .unwrap()
                .matches(&ntp)
        );
        assert!(
            !"udp:10.1.0.9:123"
                .parse::<FlowMatch>()
                .unwrap()
                .matches(&ntp),
            "address and port must be on the same end"
        );
    }

    #[test]
    fn address_rules_win_and_default_rules_are_not_stored() {
        let vm = Ipv4Addr::new(10, 0, 0, 5);
        let flow = key(FlowProto::Udp, (vm, 123), (Ipv4Addr::new(10, 1, 0, 9), 5));
        let mut t = PolicyTable::default();
        let rule = |m: &str, policy| FlowRule {
            matcher: m.parse().unwrap(),
            policy,
        };
        assert_eq!(
            t.set(rule("udp:123", FlowPolicy::Pass), 4),
            Ok(FlowPolicy::Compare)
        );
        t.set(rule("udp:10.0.0.5:123", FlowPolicy::Compare), 4)
            .unwrap();
        let i = t.lookup(&flow).unwrap();
        assert_eq!(t.rules()[i].rule.policy, FlowPolicy::Compare);
        assert_eq!(
            t.set(rule("udp:123", FlowPolicy::Compare), 4),
            Ok(FlowPolicy::Pass)
        );
        assert_eq!(t.rules().len(), 1, "port-only compare is the default");
        t.set(rule("udp:1", FlowPolicy::Pass), 2).unwrap();
        assert_eq!(
            t.set(rule("udp:2", FlowPolicy::Pass), 2),
            Err(FlowPolicyError::TooManyRules { max: 2 })
        );
    }
}
