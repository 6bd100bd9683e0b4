//! Authorization of subresource requests: a SubjectAccessReview asks the cluster (RBAC)
//! whether the user may use the subresource, the way KubeVirt's subresources are granted:
//! `update` on `virtualmachines/start|stop|restart`, `get` on
//! `virtualmachineinstances/console`, in the group `subresources.ironvisor.io`.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use tracing::{debug, instrument};

use crate::identity::User;

/// The API group of the subresources.
pub const SUBRESOURCE_GROUP: &str = "subresources.ironvisor.io";

/// Why the cluster could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// The SubjectAccessReview failed.
    #[error("asking the cluster whether {user} may {verb} {resource}/{subresource}: {source}")]
    Kube {
        /// The user.
        user: String,
        /// The verb.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// The subresource.
        subresource: &'static str,
        /// The error.
        source: kube::Error,
    },
}

/// One use of a subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `update` (PUT) or `get`.
    pub verb: &'static str,
    /// `virtualmachines` or `virtualmachineinstances`.
    pub resource: &'static str,
    /// `start`, `stop`, `restart`, `console`, ...
    pub subresource: &'static str,
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

/// The cluster's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the user may.
    pub allowed: bool,
    /// The authorizer's reason, if it gave one.
    pub reason: String,
}

/// The review for `user` doing `access`.
pub fn review_for(user: &User, access: &Access) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(SUBRESOURCE_GROUP.into()),
                version: Some("v1alpha1".into()),
                resource: Some(access.resource.into()),
                subresource: Some(access.subresource.into()),
                verb: Some(access.verb.into()),
                namespace: Some(access.namespace.clone()),
                name: Some(access.name.clone()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

/// Asks the cluster.
#[instrument(skip_all, fields(user = %user.name, verb = access.verb, subresource = access.subresource))]
pub async fn check(
    client: &kube::Client,
    user: &User,
    access: &Access,
) -> Result<Decision, AuthzError> {
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review_for(user, access))
        .await
        .map_err(|source| AuthzError::Kube {
            user: user.name.clone(),
            verb: access.verb,
            resource: access.resource,
            subresource: access.subresource,
            source,
        })?;
    let status = answer.status.unwrap_or_default();
    debug!(
        allowed = status.allowed,
        reason = status.reason.as_deref().unwrap_or(""),
        "access review"
    );
    Ok(Decision {
        allowed: status.allowed && !status.denied.unwrap_or(false),
        reason: status.reason.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_review_names_the_subresource_in_its_group() {
        let user = User {
            name: "alice".into(),
            groups: vec!["dev".into()],
            ..User::default()
        };
        let access = Access {
            verb: "update",
            resource: "virtualmachines",
            subresource: "start",
            namespace: "default".into(),
            name: "small".into(),
        };
        let review = review_for(&user, &access);
        let attributes = review.spec.resource_attributes.unwrap();
        assert_eq!(attributes.group.as_deref(), Some(SUBRESOURCE_GROUP));
        assert_eq!(attributes.resource.as_deref(), Some("virtualmachines"));
        assert_eq!(attributes.subresource.as_deref(), Some("start"));
        assert_eq!(attributes.verb.as_deref(), Some("update"));
        assert_eq!(review.spec.user.as_deref(), Some("alice"));
        assert_eq!(review.spec.extra, None);
    }
}
