//! The links, addresses, routes, neighbours and FDB entries orch-net keeps, through rtnetlink.
//! A connection is opened per operation on the calling thread, so it works in whatever network
//! namespace that thread is in (tests run a node's code on a thread inside the node's host
//! namespace).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVxlan, RouteMessageBuilder};

/// The route protocol number orch tags its routes to peers with (`ip route show proto 119`),
/// so stale ones can be found and removed.
pub const ROUTE_PROTOCOL: u8 = 119;

/// ENOENT and ESRCH: what the kernel answers when deleting something already gone.
const GONE: [i32; 3] = [-2, -3, -19];
/// EEXIST.
const EXISTS: i32 = -17;

/// A netlink connection on the calling thread's network namespace.
pub(crate) struct Netlink {
    handle: Handle,
}

/// A netlink error as a message.
fn err(what: &str, e: rtnetlink::Error) -> String {
    format!("{what}: {e}")
}

fn code(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get()),
        _ => None,
    }
}

/// Ok when the error says the thing was already gone.
fn ignore_gone(what: &str, r: Result<(), rtnetlink::Error>) -> Result<(), String> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if code(&e).is_some_and(|c| GONE.contains(&c)) => Ok(()),
        Err(e) => Err(err(what, e)),
    }
}

/// A link's name, index, MTU and MAC.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub index: u32,
    pub mtu: u32,
    pub mac: Vec<u8>,
    vxlan: Vec<InfoVxlan>,
}

impl Link {
    fn from_message(m: LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            mtu: 0,
            mac: Vec::new(),
            vxlan: Vec::new(),
        };
        for attr in m.attributes {
            match attr {
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                LinkAttribute::Address(mac) => link.mac = mac,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(v)) = info {
                            link.vxlan = v;
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// What the VXLAN device must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub underlay: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// An IPv4 address on a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LinkAddress {
    pub index: u32,
    pub address: Ipv4Addr,
    pub prefix: u8,
}

/// An IPv4 route of the main table, as orch-net compares them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub protocol: u8,
    pub src: Option<Ipv4Addr>,
}

impl Route {
    fn from_message(m: &RouteMessage) -> Option<Route> {
        if m.header.address_family != AddressFamily::Inet
            || m.header.table != RouteHeader::RT_TABLE_MAIN
        {
            return None;
        }
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let (mut gateway, mut oif, mut src) = (None, None, None);
        for attr in &m.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                RouteAttribute::PrefSource(RouteAddress::Inet(a)) => src = Some(*a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        Some(Route {
            dst: Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?,
            gateway,
            oif,
            onlink: m.header.flags.contains(RouteFlags::Onlink),
            protocol: u8::from(m.header.protocol),
            src,
        })
    }

    fn message(&self) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.dst.network(), self.dst.prefix_len())
            .protocol(RouteProtocol::from(self.protocol));
        if let Some(gw) = self.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if let Some(src) = self.src {
            b = b.pref_source(src);
        }
        if self.onlink {
            b = b.onlink();
        }
        if self.gateway.is_none() {
            b = b.scope(RouteScope::Link);
        }
        b.build()
    }
}

/// A permanent neighbour or FDB entry on a link.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Neighbour {
    /// The IP (neighbour) or the remote VTEP (FDB `dst`).
    pub ip: Option<Ipv4Addr>,
    pub mac: Vec<u8>,
    message: Option<NeighbourMessageKey>,
}

/// Neighbours compare by ip and MAC; the kernel's message rides along for deletion.
#[derive(Clone, Debug)]
struct NeighbourMessageKey(NeighbourMessage);
impl PartialEq for NeighbourMessageKey {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for NeighbourMessageKey {}
impl std::hash::Hash for NeighbourMessageKey {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl Neighbour {
    /// An entry to add.
    pub fn new(ip: Ipv4Addr, mac: [u8; 6]) -> Neighbour {
        Neighbour {
            ip: Some(ip),
            mac: mac.to_vec(),
            message: None,
        }
    }
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, String> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| format!("cannot open a netlink socket: {e}"))?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The link called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, String> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(m) => Ok(m.map(Link::from_message)),
            Err(e) if code(&e).is_some_and(|c| GONE.contains(&c)) => Ok(None),
            Err(e) => Err(err(&format!("reading link {name}"), e)),
        }
    }

    /// The link with index `index`.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, String> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(m) => Ok(m.map(Link::from_message)),
            Err(e) if code(&e).is_some_and(|c| GONE.contains(&c)) => Ok(None),
            Err(e) => Err(err(&format!("reading link {index}"), e)),
        }
    }

    /// Every link's index and name.
    pub async fn link_names(&self) -> Result<Vec<(u32, String)>, String> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| err("listing links", e))?;
        Ok(links
            .into_iter()
            .map(|m| {
                let name = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                });
                (m.header.index, name.unwrap_or_default())
            })
            .collect())
    }

    /// Deletes the link called `name`, if there is one.
    pub async fn delete_link(&self, name: &str) -> Result<(), String> {
        if let Some(link) = self.link(name).await? {
            let r = self.handle.link().del(link.index).execute().await;
            ignore_gone(&format!("deleting link {name}"), r)?;
        }
        Ok(())
    }

    /// Makes sure bridge `name` exists with `mtu`, up; returns its index.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32, String> {
        if self.link(name).await?.is_none() {
            let r = self
                .handle
                .link()
                .add(LinkBridge::new(name).mtu(mtu).build())
                .execute()
                .await;
            match r {
                Ok(()) => {}
                Err(e) if code(&e) == Some(EXISTS) => {}
                Err(e) => return Err(err(&format!("creating bridge {name}"), e)),
            }
        }
        let link = self
            .link(name)
            .await?
            .ok_or_else(|| format!("bridge {name} vanished after it was created"))?;
        self.set_up(name, link.index, mtu).await?;
        Ok(link.index)
    }

    async fn set_up(&self, name: &str, index: u32, mtu: u32) -> Result<(), String> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| err(&format!("setting {name} up with mtu {mtu}"), e))
    }

    /// Makes sure the VXLAN device is as `spec` says (recreating it when it differs); returns
    /// its index.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<u32, String> {
        if let Some(link) = self.link(&spec.name).await? {
            let same = link.mac == spec.mac
                && link.vxlan.contains(&InfoVxlan::Id(spec.vni))
                && link.vxlan.contains(&InfoVxlan::Local(spec.local))
                && link.vxlan.contains(&InfoVxlan::Port(spec.port))
                && link.vxlan.contains(&InfoVxlan::Link(spec.underlay))
                && link.vxlan.contains(&InfoVxlan::Learning(false));
            if same {
                self.set_up(&spec.name, link.index, spec.mtu).await?;
                return Ok(link.index);
            }
            self.delete_link(&spec.name).await?;
        }
        let msg = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.underlay)
            .port(spec.port)
            .local(spec.local)
            .learning(false)
            .mtu(spec.mtu)
            .address(spec.mac.to_vec())
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| err(&format!("creating vxlan device {}", spec.name), e))?;
        let link = self
            .link(&spec.name)
            .await?
            .ok_or_else(|| format!("vxlan device {} vanished after it was created", spec.name))?;
        Ok(link.index)
    }

    /// Every IPv4 address of every link.
    pub async fn addresses(&self) -> Result<Vec<LinkAddress>, String> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| err("listing addresses", e))?;
        let mut out = Vec::new();
        for m in msgs {
            for attr in &m.attributes {
                if let AddressAttribute::Local(IpAddr::V4(a)) = attr {
                    out.push(LinkAddress {
                        index: m.header.index,
                        address: *a,
                        prefix: m.header.prefix_len,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Makes `address` the only IPv4 address of link `index`.
    pub async fn set_only_address(&self, index: u32, address: Ipv4Net) -> Result<(), String> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| err("listing addresses", e))?;
        let mut present = false;
        for m in msgs {
            if m.header.family != AddressFamily::Inet {
                continue;
            }
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
                _ => None,
            });
            if local == Some(address.addr()) && m.header.prefix_len == address.prefix_len() {
                present = true;
                continue;
            }
            let r = self.handle.address().del(m).execute().await;
            ignore_gone("removing an old address", r)?;
        }
        if !present {
            let r = self
                .handle
                .address()
                .add(index, IpAddr::V4(address.addr()), address.prefix_len())
                .execute()
                .await;
            match r {
                Ok(()) => {}
                Err(e) if code(&e) == Some(EXISTS) => {}
                Err(e) => return Err(err(&format!("adding address {address}"), e)),
            }
        }
        Ok(())
    }

    /// Every IPv4 route of the main table.
    pub async fn routes(&self) -> Result<Vec<Route>, String> {
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| err("listing routes", e))?;
        Ok(msgs.iter().filter_map(Route::from_message).collect())
    }

    /// Adds (or replaces) `route`.
    pub async fn add_route(&self, route: &Route) -> Result<(), String> {
        self.handle
            .route()
            .add(route.message())
            .replace()
            .execute()
            .await
            .map_err(|e| err(&format!("adding route {route:?}"), e))
    }

    /// Deletes `route`; already gone is fine.
    pub async fn delete_route(&self, route: &Route) -> Result<(), String> {
        let r = self.handle.route().del(route.message()).execute().await;
        ignore_gone(&format!("deleting route to {}", route.dst), r)
    }

    /// The permanent entries of link `index`: neighbours (`fdb == false`) or FDB entries.
    pub async fn neighbours(&self, index: u32, fdb: bool) -> Result<Vec<Neighbour>, String> {
        let family = if fdb {
            AddressFamily::Bridge
        } else {
            AddressFamily::Inet
        };
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(|e| err("listing neighbours", e))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.ifindex == index && m.header.family == family)
            .filter(|m| m.header.state == NeighbourState::Permanent)
            .map(|m| {
                let mut n = Neighbour {
                    ip: None,
                    mac: Vec::new(),
                    message: None,
                };
                for attr in &m.attributes {
                    match attr {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                            n.ip = Some(*a)
                        }
                        NeighbourAttribute::LinkLayerAddress(mac) => n.mac = mac.clone(),
                        _ => {}
                    }
                }
                n.message = Some(NeighbourMessageKey(m));
                n
            })
            .collect())
    }

    /// Adds (or replaces) a permanent neighbour (`fdb == false`: `ip neigh replace IP lladdr
    /// MAC nud permanent`) or FDB entry (`bridge fdb replace MAC dst IP self permanent`).
    pub async fn add_neighbour(&self, index: u32, n: &Neighbour, fdb: bool) -> Result<(), String> {
        let ip = n.ip.ok_or("a neighbour needs an address")?;
        let req = if fdb {
            self.handle
                .neighbours()
                .add_bridge(index, &n.mac)
                .destination(IpAddr::V4(ip))
                .flags(NeighbourFlags::Own)
        } else {
            self.handle
                .neighbours()
                .add(index, IpAddr::V4(ip))
                .link_layer_address(&n.mac)
        };
        req.state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| err(&format!("adding neighbour {ip} (fdb {fdb})"), e))
    }

    /// Deletes a neighbour or FDB entry listed by [`Netlink::neighbours`].
    pub async fn delete_neighbour(&self, n: &Neighbour) -> Result<(), String> {
        let Some(NeighbourMessageKey(m)) = &n.message else {
            return Ok(());
        };
        let r = self.handle.neighbours().del(m.clone()).execute().await;
        ignore_gone("deleting a neighbour", r)
    }
}
