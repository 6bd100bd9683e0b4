//! The api-server's URL space, parsed into what a request asks for. Pure, so every path
//! kube-apiserver may send is unit tested.
//!
//! | path | method | what |
//! |---|---|---|
//! | `/healthz`, `/livez`, `/readyz` | GET | probes |
//! | `/mutate`, `/validate` | POST | admission reviews |
//! | `/apis`, `/apis/subresources.ironvisor.io[/v1alpha1]` | GET | discovery |
//! | `/apis/subresources.ironvisor.io/v1alpha1/namespaces/NS/virtualmachines/NAME/{start,stop,restart}` | PUT | lifecycle |
//! | `.../namespaces/NS/virtualmachineinstances/NAME/{pause,unpause}` | PUT | vCPUs |
//! | `.../namespaces/NS/virtualmachineinstances/NAME/console` | GET (WebSocket) | serial console |
//! | `.../namespaces/NS/virtualmachineinstances/NAME/portforward/PORT[/tcp]` | GET (WebSocket) | a TCP connection to the guest's PORT |

use hyper::Method;
use serde_json::{json, Value};

use ironvisor_crds::node_link::LinkOp;

use crate::admission::Hook;
use crate::authz::SUBRESOURCE_GROUP;

/// The served version of the subresource group.
pub const SUBRESOURCE_VERSION: &str = "v1alpha1";

/// A VM subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `restart`.
    Restart,
}

impl VmAction {
    /// The subresource name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
        }
    }

    const ALL: [Self; 3] = [Self::Start, Self::Stop, Self::Restart];
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A probe: healthz/livez (`ready: false`) or readyz (`ready: true`).
    Probe {
        /// Whether readiness is asked.
        ready: bool,
    },
    /// An admission review.
    Admission(Hook),
    /// Discovery document.
    Discovery(Value),
    /// An instance subresource.
    Vmi {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Which.
        op: LinkOp,
        /// The guest port of a `portforward`.
        port: Option<u16>,
    },
    /// A known path with a bad parameter; the message says which.
    Invalid(String),
    /// A VM subresource.
    Vm {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Which.
        action: VmAction,
    },
    /// Known path, wrong method.
    WrongMethod {
        /// The methods the path takes.
        allowed: &'static str,
    },
    /// Nothing here.
    NotFound,
}

/// Parses `method` + `path`.
pub fn route(method: &Method, path: &str) -> Route {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let expect = |wanted: &Method, allowed: &'static str, route: Route| {
        if method == wanted {
            route
        } else {
            Route::WrongMethod { allowed }
        }
    };
    match segments.as_slice() {
        ["healthz"] | ["livez"] => expect(&Method::GET, "GET", Route::Probe { ready: false }),
        ["readyz"] => expect(&Method::GET, "GET", Route::Probe { ready: true }),
        ["mutate"] => expect(&Method::POST, "POST", Route::Admission(Hook::Mutate)),
        ["validate"] => expect(&Method::POST, "POST", Route::Admission(Hook::Validate)),
        ["apis"] => expect(&Method::GET, "GET", Route::Discovery(group_list())),
        ["apis", group] if *group == SUBRESOURCE_GROUP => {
            expect(&Method::GET, "GET", Route::Discovery(group_document()))
        }
        ["apis", group, version]
            if *group == SUBRESOURCE_GROUP && *version == SUBRESOURCE_VERSION =>
        {
            expect(&Method::GET, "GET", Route::Discovery(resource_list()))
        }
        ["apis", group, version, "namespaces", namespace, "virtualmachines", name, action]
            if *group == SUBRESOURCE_GROUP && *version == SUBRESOURCE_VERSION =>
        {
            match VmAction::ALL.iter().find(|a| a.name() == *action) {
                Some(action) => expect(
                    &Method::PUT,
                    "PUT",
                    Route::Vm {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                        action: *action,
                    },
                ),
                None => Route::NotFound,
            }
        }
        ["apis", group, version, "namespaces", namespace, "virtualmachineinstances", name, action]
            if *group == SUBRESOURCE_GROUP && *version == SUBRESOURCE_VERSION =>
        {
            let (op, wanted, allowed) = match *action {
                "pause" => (LinkOp::Pause, Method::PUT, "PUT"),
                "unpause" => (LinkOp::Unpause, Method::PUT, "PUT"),
                "console" => (LinkOp::Console, Method::GET, "GET"),
                _ => return Route::NotFound,
            };
            expect(
                &wanted,
                allowed,
                Route::Vmi {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    op,
                    port: None,
                },
            )
        }
        // KubeVirt's `portforward/PORT` and `portforward/PORT/PROTOCOL` (tcp only).
        ["apis", group, version, "namespaces", namespace, "virtualmachineinstances", name, "portforward", port, rest @ ..]
            if *group == SUBRESOURCE_GROUP
                && *version == SUBRESOURCE_VERSION
                && rest.len() <= 1 =>
        {
            if let Some(protocol) = rest.first().filter(|p| !p.eq_ignore_ascii_case("tcp")) {
                return Route::Invalid(format!(
                    "portforward protocol {protocol:?} is not served; only tcp is"
                ));
            }
            let Some(port) = port.parse::<u16>().ok().filter(|p| *p != 0) else {
                return Route::Invalid(format!(
                    "portforward port {port:?} is not a port number (1-65535)"
                ));
            };
            expect(
                &Method::GET,
                "GET",
                Route::Vmi {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    op: LinkOp::PortForward,
                    port: Some(port),
                },
            )
        }
        _ => Route::NotFound,
    }
}

fn group_document() -> Value {
    let version = json!({
        "groupVersion": format!("{SUBRESOURCE_GROUP}/{SUBRESOURCE_VERSION}"),
        "version": SUBRESOURCE_VERSION,
    });
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": SUBRESOURCE_GROUP,
        "versions": [version],
        "preferredVersion": version,
    })
}

fn group_list() -> Value {
    let mut group = group_document();
    if let Some(object) = group.as_object_mut() {
        object.remove("kind");
        object.remove("apiVersion");
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]})
}

fn resource_list() -> Value {
    let entry = |name: String, verb: &str| json!({"name": name, "singularName": "", "namespaced": true, "kind": "", "verbs": [verb]});
    let mut resources: Vec<Value> = VmAction::ALL
        .iter()
        .map(|action| entry(format!("virtualmachines/{}", action.name()), "update"))
        .collect();
    resources.push(entry("virtualmachineinstances/pause".into(), "update"));
    resources.push(entry("virtualmachineinstances/unpause".into(), "update"));
    resources.push(entry("virtualmachineinstances/console".into(), "get"));
    resources.push(entry("virtualmachineinstances/portforward".into(), "get"));
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{SUBRESOURCE_GROUP}/{SUBRESOURCE_VERSION}"),
        "resources": resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "/apis/subresources.ironvisor.io/v1alpha1/namespaces/default";

    #[test]
    fn vm_subresources_take_put() {
        assert_eq!(
            route(&Method::PUT, &format!("{BASE}/virtualmachines/small/start")),
            Route::Vm {
                namespace: "default".into(),
                name: "small".into(),
                action: VmAction::Start
            }
        );
        assert_eq!(
            route(&Method::GET, &format!("{BASE}/virtualmachines/small/stop")),
            Route::WrongMethod { allowed: "PUT" }
        );
        assert_eq!(
            route(
                &Method::PUT,
                &format!("{BASE}/virtualmachines/small/explode")
            ),
            Route::NotFound
        );
        assert_eq!(
            route(
                &Method::PUT,
                "/apis/subresources.ironvisor.io/v2/namespaces/d/virtualmachines/s/start"
            ),
            Route::NotFound
        );
    }

    #[test]
    fn instance_subresources() {
        assert_eq!(
            route(
                &Method::GET,
                &format!("{BASE}/virtualmachineinstances/small/console")
            ),
            Route::Vmi {
                namespace: "default".into(),
                name: "small".into(),
                op: LinkOp::Console,
                port: None,
            }
        );
        assert_eq!(
            route(
                &Method::PUT,
                &format!("{BASE}/virtualmachineinstances/small/pause")
            ),
            Route::Vmi {
                namespace: "default".into(),
                name: "small".into(),
                op: LinkOp::Pause,
                port: None,
            }
        );
        assert_eq!(
            route(
                &Method::PUT,
                &format!("{BASE}/virtualmachineinstances/small/console")
            ),
            Route::WrongMethod { allowed: "GET" }
        );
        assert_eq!(
            route(
                &Method::PUT,
                &format!("{BASE}/virtualmachineinstances/small/start")
            ),
            Route::NotFound
        );
    }

    #[test]
    fn port_forward_takes_a_port_and_optionally_tcp() {
        for path in ["portforward/22", "portforward/22/tcp"] {
            assert_eq!(
                route(
                    &Method::GET,
                    &format!("{BASE}/virtualmachineinstances/small/{path}")
                ),
                Route::Vmi {
                    namespace: "default".into(),
                    name: "small".into(),
                    op: LinkOp::PortForward,
                    port: Some(22),
                }
            );
        }
        for (path, needle) in [
            ("portforward/0", "\"0\""),
            ("portforward/ssh", "\"ssh\""),
            ("portforward/70000", "\"70000\""),
            ("portforward/53/udp", "\"udp\""),
        ] {
            match route(
                &Method::GET,
                &format!("{BASE}/virtualmachineinstances/small/{path}"),
            ) {
                Route::Invalid(message) => assert!(message.contains(needle), "{message}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        assert_eq!(
            route(
                &Method::GET,
                &format!("{BASE}/virtualmachineinstances/small/portforward/22/tcp/x")
            ),
            Route::NotFound
        );
    }

    #[test]
    fn discovery_lists_the_subresources() {
        let Route::Discovery(list) =
            route(&Method::GET, "/apis/subresources.ironvisor.io/v1alpha1")
        else {
            panic!("not discovery")
        };
        let names: Vec<_> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "virtualmachines/start",
                "virtualmachines/stop",
                "virtualmachines/restart",
                "virtualmachineinstances/pause",
                "virtualmachineinstances/unpause",
                "virtualmachineinstances/console",
                "virtualmachineinstances/portforward"
            ]
        );
        let Route::Discovery(groups) = route(&Method::GET, "/apis/") else {
            panic!("not discovery")
        };
        assert_eq!(groups["groups"][0]["name"], SUBRESOURCE_GROUP);
    }

    #[test]
    fn probes_and_hooks() {
        assert_eq!(route(&Method::GET, "/readyz"), Route::Probe { ready: true });
        assert_eq!(
            route(&Method::POST, "/validate"),
            Route::Admission(Hook::Validate)
        );
        assert_eq!(
            route(&Method::GET, "/mutate"),
            Route::WrongMethod { allowed: "POST" }
        );
        assert_eq!(route(&Method::GET, "/etc/passwd"), Route::NotFound);
    }
}
