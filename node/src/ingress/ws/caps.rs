//! Optional caps on WebSocket connections per client address and per user, with no IO:
//! [`Caps::admit`] before a connection registers, [`Caps::release`] when it ends. A cap
//! of 0 is no cap. Behind a proxy every client has the proxy's address, so the per-IP
//! cap is for nodes that face clients directly.

use std::collections::HashMap;
use std::net::IpAddr;

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    Ip,
    User,
}

impl OverCap {
    /// The close reason sent with 1013.
    pub fn reason(self) -> &'static str {
        match self {
            OverCap::Ip => "too many connections from this address",
            OverCap::User => "too many connections for this user",
        }
    }
}

/// See the module header.
#[derive(Debug, Default)]
pub struct Caps {
    max_per_ip: usize,
    max_per_user: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_user: HashMap<String, usize>,
}

impl Caps {
    pub fn new(max_per_ip: usize, max_per_user: usize) -> Self {
        Caps {
            max_per_ip,
            max_per_user,
            ..Caps::default()
        }
    }

    /// Counts a connection of `user` from `ip`, unless that breaks a cap.
    pub fn admit(&mut self, ip: IpAddr, user: &str) -> Result<(), OverCap> {
        let ip_count = self.per_ip.get(&ip).copied().unwrap_or(0);
        if self.max_per_ip > 0 && ip_count >= self.max_per_ip {
            return Err(OverCap::Ip);
        }
        let user_count = self.per_user.get(user).copied().unwrap_or(0);
        if self.max_per_user > 0 && user_count >= self.max_per_user {
            return Err(OverCap::User);
        }
        if self.max_per_ip > 0 {
            *self.per_ip.entry(ip).or_default() += 1;
        }
        if self.max_per_user > 0 {
            *self.per_user.entry(user.to_owned()).or_default() += 1;
        }
        Ok(())
    }

    /// Forgets a connection [`Caps::admit`] counted.
    pub fn release(&mut self, ip: IpAddr, user: &str) {
        if self.max_per_ip > 0
            && let Some(n) = self.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        if self.max_per_user > 0
            && let Some(n) = self.per_user.get_mut(user)
        {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_address_and_per_user() {
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let mut caps = Caps::new(2, 3);
        assert_eq!(caps.admit(a, "u1"), Ok(()));
        assert_eq!(caps.admit(a, "u1"), Ok(()));
        assert_eq!(caps.admit(a, "u2"), Err(OverCap::Ip));
        assert_eq!(caps.admit(b, "u1"), Ok(()));
        assert_eq!(caps.admit(b, "u1"), Err(OverCap::User));
        caps.release(a, "u1");
        assert_eq!(caps.admit(b, "u2"), Ok(()));
        assert_eq!(caps.admit(a, "u2"), Ok(()));
        assert!(caps.per_ip.values().all(|n| *n <= 2));
    }

    #[test]
    fn no_caps_count_nothing() {
        let mut caps = Caps::new(0, 0);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..1000 {
            assert_eq!(caps.admit(a, "u"), Ok(()));
        }
        assert!(caps.per_ip.is_empty() && caps.per_user.is_empty());
    }
}
