//! Where the kubelet keeps a pod's volumes on the node: `emptyDir` volumes are directories
//! under `<kubelet root>/pods/<pod uid>/volumes/kubernetes.io~empty-dir/<volume>`.

use std::path::{Path, PathBuf};

/// The kubelet's default root directory.
pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";

/// The launcher pod's volume that holds the launcher's API and console sockets.
pub const SOCKETS_VOLUME: &str = "sockets";

/// Directory of the emptyDir volume `volume` of the pod `pod_uid`.
pub fn empty_dir(kubelet_root: &Path, pod_uid: &str, volume: &str) -> Option<PathBuf> {
    let safe = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    if !safe(pod_uid) || !safe(volume) {
        return None;
    }
    Some(
        kubelet_root
            .join("pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~empty-dir")
            .join(volume),
    )
}

/// The launcher's API socket of a launcher pod.
pub fn launcher_api_socket(kubelet_root: &Path, pod_uid: &str) -> Option<PathBuf> {
    empty_dir(kubelet_root, pod_uid, SOCKETS_VOLUME).map(|dir| dir.join("api.sock"))
}

/// The launcher's console socket of a launcher pod.
pub fn launcher_console_socket(kubelet_root: &Path, pod_uid: &str) -> Option<PathBuf> {
    empty_dir(kubelet_root, pod_uid, SOCKETS_VOLUME).map(|dir| dir.join("console.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_kubelet_layout_and_refuse_traversal() {
        let root = Path::new("/var/lib/kubelet");
        assert_eq!(
            launcher_api_socket(root, "1234-abcd").unwrap(),
            Path::new(
                "/var/lib/kubelet/pods/1234-abcd/volumes/kubernetes.io~empty-dir/sockets/api.sock"
            )
        );
        assert!(empty_dir(root, "..", "sockets").is_none());
        assert!(empty_dir(root, "a/b", "sockets").is_none());
        assert!(empty_dir(root, "uid", "").is_none());
    }
}
