//! Static interface configuration: addresses, gateways and routes.

use std::net::IpAddr;

use ipnet::IpNet;

use super::netlink::{Lifetime, Netlink, Route, RouteOrigin};
use super::plan::StaticPlan;
use atoll_common::error::error_chain;

/// The routes a static entry asks for, in the order they are added.
pub fn static_routes(plan: &StaticPlan, index: u32, metric: Option<u32>) -> Vec<Route> {
    let on_prefix = |gw: IpAddr| plan.addresses.iter().any(|a| a.contains(&gw));
    let mut routes: Vec<Route> = plan
        .routes
        .iter()
        .map(|r| {
            Route::new(r.to.trunc(), r.via, index)
                .metric(r.metric.or(metric))
                .origin(RouteOrigin::Static)
                .onlink(r.via.is_some_and(|gw| gw.is_ipv4() && !on_prefix(gw)))
        })
        .collect();
    if let Some(gw) = plan.gateway4 {
        let gw = IpAddr::V4(gw);
        routes.push(
            Route::new(IpNet::V4(Default::default()), Some(gw), index)
                .metric(metric)
                .origin(RouteOrigin::Static)
                .onlink(!on_prefix(gw)),
        );
    }
    if let Some(gw) = plan.gateway6 {
        routes.push(
            Route::new(IpNet::V6(Default::default()), Some(IpAddr::V6(gw)), index)
                .metric(metric)
                .origin(RouteOrigin::Static),
        );
    }
    routes
}

/// Adds the entry's addresses (forever) and routes to link `index`.
/// Goes on past failures; returns them, one message each.
pub fn apply(nl: &mut Netlink, index: u32, plan: &StaticPlan, metric: Option<u32>) -> Vec<String> {
    let mut errors = Vec::new();
    for a in &plan.addresses {
        if let Err(e) = nl.add_address(index, *a, Lifetime::Forever) {
            errors.push(error_chain(&e));
        }
    }
    for r in static_routes(plan, index, metric) {
        if let Err(e) = nl.add_route(&r) {
            errors.push(error_chain(&e));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::netlink::render_route;
    use crate::net::plan::StaticRoute;

    #[test]
    fn routes_in_order() {
        let plan = StaticPlan {
            addresses: vec![
                "192.168.1.5/24".parse().unwrap(),
                "2001:db8::5/64".parse().unwrap(),
            ],
            gateway4: Some("192.168.1.1".parse().unwrap()),
            gateway6: Some("fe80::1".parse().unwrap()),
            routes: vec![
                StaticRoute {
                    to: "10.1.0.0/16".parse().unwrap(),
                    via: Some("192.168.1.254".parse().unwrap()),
                    metric: Some(50),
                },
                StaticRoute {
                    to: "172.16.0.1/12".parse().unwrap(),
                    via: None,
                    metric: None,
                },
                StaticRoute {
                    to: "10.9.0.0/16".parse().unwrap(),
                    via: Some("10.8.0.1".parse().unwrap()),
                    metric: None,
                },
            ],
        };
        let r: Vec<String> = static_routes(&plan, 3, Some(10))
            .iter()
            .map(|r| render_route(r, |_| "eth1".into()))
            .collect();
        assert_eq!(
            r,
            [
                "10.1.0.0/16 via 192.168.1.254 dev eth1 proto static metric 50",
                "172.16.0.0/12 dev eth1 proto static scope link metric 10",
                "10.9.0.0/16 via 10.8.0.1 dev eth1 proto static metric 10 onlink",
                "default via 192.168.1.1 dev eth1 proto static metric 10",
                "default via fe80::1 dev eth1 proto static metric 10",
            ]
        );
    }
}
