//! `spec.accessCredentials`: SSH public keys from Secrets, given to the guest by
//! cloud-init (KubeVirt's `propagationMethod.noCloud`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One credential; set `sshPublicKey` (a `userPassword` needs KubeVirt's guest agent,
/// which Ironvisor guests do not run, and is refused).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessCredential {
    /// Public keys for the guest's default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<SshPublicKeyAccessCredential>,
    /// Passwords through the guest agent: refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_password: Option<UserPasswordAccessCredential>,
}

/// KubeVirt's passwords from a Secret, set by its guest agent (refused here).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserPasswordAccessCredential {
    /// The Secret holding `user: password` pairs.
    pub source: SshPublicKeySource,
    /// `qemuGuestAgent: {}`.
    pub propagation_method: UserPasswordPropagationMethod,
}

/// How passwords would reach the guest.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserPasswordPropagationMethod {
    /// Through KubeVirt's guest agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_guest_agent: Option<EmptyObject>,
}

/// Where the keys come from and how they reach the guest.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshPublicKeyAccessCredential {
    /// The Secret holding the keys (every value of it: one or more `authorized_keys`
    /// lines).
    pub source: SshPublicKeySource,
    /// How the guest gets them: `noCloud` (added to the cloudInitNoCloud userData).
    pub propagation_method: SshPropagationMethod,
}

/// The keys' source.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshPublicKeySource {
    /// A Secret in the instance's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<AccessCredentialSecret>,
}

/// A Secret by name.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessCredentialSecret {
    /// The Secret's name.
    pub secret_name: String,
}

/// How the keys reach the guest; set one.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshPropagationMethod {
    /// As `ssh_authorized_keys` in the cloudInitNoCloud userData (served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_cloud: Option<EmptyObject>,
    /// Through a config drive: refused (Ironvisor seeds are NoCloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<EmptyObject>,
    /// Through KubeVirt's guest agent: refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_guest_agent: Option<QemuGuestAgentKeys>,
}

/// KubeVirt's guest-agent key propagation: the users whose keys it sets.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QemuGuestAgentKeys {
    /// Guest users.
    #[serde(default)]
    pub users: Vec<String>,
}

/// `{}`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EmptyObject {}

impl AccessCredential {
    /// The Secret of a served credential (an SSH key propagated by noCloud).
    pub fn no_cloud_key_secret(&self) -> Option<&str> {
        let key = self.ssh_public_key.as_ref()?;
        key.propagation_method.no_cloud.as_ref()?;
        key.source.secret.as_ref().map(|s| s.secret_name.as_str())
    }
}
