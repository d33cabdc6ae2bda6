import Glibc

/// Checks what klab needs from the machine before a run creates anything, so that a missing
/// privilege, device or mount ends klab with one line that names it (exit 69), in the terms
/// of where klab runs: a host, or a container.
public enum Preflight {
    /// - Parameters:
    ///   - tracing: the BPF tracer and its lab cgroup (BTF, tracefs, cgroup2, CAP_BPF, CAP_PERFMON).
    ///   - lab: lab hosts, TUN links and their capture (namespaces, /dev/net/tun, CAP_NET_RAW).
    public static func check(tracing: Bool = true, lab: Bool = true) throws {
        guard geteuid() == 0 else {
            throw Requirement(
                "klab must run as root (it creates network namespaces, TUN devices and BPF programs): "
                    + (Container.engine == nil ? "run it with sudo" : "run the container as root (no --user)"))
        }
        try Capability.check(Capability.needed(tracing: tracing, lab: lab))
        if lab, access("/dev/net/tun", R_OK | W_OK) != 0 {
            throw Requirement("/dev/net/tun is missing: " + (Container.engine != nil
                ? Container.add("--device /dev/net/tun") : "load the tun module (modprobe tun)" + setupHint("creates the device node")))
        }
        guard tracing else { return }
        guard access("/sys/kernel/btf/vmlinux", R_OK) == 0 else {
            throw Requirement("kernel BTF (/sys/kernel/btf/vmlinux) is missing: the tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF"
                + (Container.engine != nil ? "; if the host has it, " + Container.add("-v /sys/kernel/btf:/sys/kernel/btf:ro") : ""))
        }
        guard Mounts.find(type: "tracefs") != nil else {
            throw Requirement("tracefs is not mounted: " + (Container.engine != nil
                ? Container.add("-v /sys/kernel/tracing:/sys/kernel/tracing")
                : "mount -t tracefs nodev /sys/kernel/tracing" + setupHint("mounts it")))
        }
        guard let cgroup2 = Mounts.entry(type: "cgroup2") else { throw Requirement(missingCgroup2) }
        // /proc/self/cgroup names klab's cgroup from its namespace's root: in the mount of a
        // hierarchy whose root lies above that, the name leads elsewhere.
        if cgroup2.root.hasPrefix("/..") {
            throw Requirement("klab runs in a cgroup namespace of its own, below the root of the cgroup2 mounted at \(cgroup2.point), "
                + "so it cannot find its own cgroup there: " + (Container.engine != nil
                    ? Container.add("--cgroupns host") : "run klab in the cgroup namespace that mounted it (not under unshare --cgroup)"))
        }
    }

    /// Where the host keeps cgroup v2: beside v1 controllers (systemd's hybrid layout, where
    /// /proc/self/cgroup also lists numbered v1 hierarchies) or alone at /sys/fs/cgroup.
    static var cgroup2Home: String {
        let lines = (try? KernelFile.text("/proc/self/cgroup"))?.split(separator: "\n") ?? []
        return lines.contains { !$0.hasPrefix("0::") } ? "/sys/fs/cgroup/unified" : "/sys/fs/cgroup"
    }

    static var missingCgroup2: String {
        let home = cgroup2Home
        return "no cgroup v2 hierarchy is mounted (klab's lab cgroup lives there): " + (Container.engine != nil
            ? Container.add("-v \(home):\(home)") : "mount -t cgroup2 none \(home)" + setupHint("mounts it"))
    }

    /// ", or run lab/setup (it …)" when klab runs from a checkout that has lab/setup, on a host:
    /// in a container, or with klab installed alone, that script cannot help.
    static func setupHint(_ what: String) -> String {
        guard Container.engine == nil else { return "" }
        var exe = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &exe, exe.count - 1)
        var candidates = ["lab/setup"]
        if n > 0 {
            // .build/debug/klab or .build/x86_64-unknown-linux-gnu/release/klab in a checkout.
            var dir = String(decoding: exe[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            for _ in 0..<4 {
                dir = String(dir[..<(dir.lastIndex(of: "/") ?? dir.startIndex)])
                candidates.append(dir + "/lab/setup")
            }
        }
        guard let setup = candidates.first(where: { access($0, X_OK) == 0 }) else { return "" }
        return ", or run \(setup) as root (it \(what))"
    }
}

/// The container klab runs in, if any, for hints that say what to add to the run line.
public enum Container {
    /// "podman", "docker", another engine's name (the `container` variable that podman, LXC
    /// and systemd-nspawn set), or nil on a host. A container also has a PID namespace of its
    /// own: marker files outlive the container they were made for (a VM whose disk was made
    /// from a container image keeps /.dockerenv), and the kernel's first PID namespace has
    /// inode 0xEFFFFFFC (PROC_PID_INIT_INO).
    public static let engine: String? = {
        var st = stat()
        guard stat("/proc/self/ns/pid", &st) == 0, st.st_ino != 0xEFFF_FFFC else { return nil }
        if let name = getenv("container").map({ String(cString: $0) }), !name.isEmpty { return name == "oci" ? "podman" : name }
        if access("/run/.containerenv", F_OK) == 0 { return "podman" }
        if access("/.dockerenv", F_OK) == 0 { return "docker" }
        return nil
    }()

    /// "add FLAG to podman run", or to docker run, or the engine's equivalent.
    static func add(_ flag: String) -> String {
        switch engine {
        case "podman", "docker": "add \(flag) to \(engine!) run"
        default: "add \(flag) to docker run or podman run (or give the \(engine ?? "container") the equivalent)"
        }
    }
}

/// A Linux capability klab needs, and what for.
public struct Capability: Sendable, Equatable {
    public let name: String  // "CAP_NET_ADMIN"
    public let bit: Int
    let purpose: String
    /// Older kernels fold this capability into CAP_SYS_ADMIN, which then grants it (CAP_BPF and
    /// CAP_PERFMON exist since Linux 5.8; before, and still as an alternative, CAP_SYS_ADMIN).
    let grantedBySysAdmin: Bool

    public static let netAdmin = Capability(name: "CAP_NET_ADMIN", bit: 12, purpose: "TUN links, their addresses and routes, cgroup BPF programs", grantedBySysAdmin: false)
    public static let netRaw = Capability(name: "CAP_NET_RAW", bit: 13, purpose: "capturing packets on the lab links", grantedBySysAdmin: false)
    public static let sysAdmin = Capability(name: "CAP_SYS_ADMIN", bit: 21, purpose: "network namespaces for the lab hosts", grantedBySysAdmin: false)
    public static let perfmon = Capability(name: "CAP_PERFMON", bit: 38, purpose: "attaching tracing programs", grantedBySysAdmin: true)
    public static let bpf = Capability(name: "CAP_BPF", bit: 39, purpose: "loading BPF programs", grantedBySysAdmin: true)

    /// What a command needs: the lab (hosts, links, capture), the tracer, or both.
    public static func needed(tracing: Bool, lab: Bool) -> [Capability] {
        (lab ? [sysAdmin, netAdmin, netRaw] : []) + (tracing ? [netAdmin, bpf, perfmon] : [])
    }

    /// The effective set, from /proc/self/status (CapEff, hexadecimal).
    static func effective() -> UInt64? {
        guard let status = try? KernelFile.text("/proc/self/status"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }) else { return nil }
        return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).last.flatMap { UInt64($0, radix: 16) }
    }

    /// The highest capability this kernel knows (/proc/sys/kernel/cap_last_cap).
    static let lastCap: Int = {
        let text = (try? KernelFile.text("/proc/sys/kernel/cap_last_cap")) ?? ""
        return Int(text.split(separator: "\n").first ?? "") ?? 40
    }()

    /// Whether the effective set has it: itself, or CAP_SYS_ADMIN where that grants it.
    static func held(_ c: Capability, in set: UInt64) -> Bool {
        func has(_ bit: Int) -> Bool { set & (1 << UInt64(bit)) != 0 }
        return has(c.bit) || (c.grantedBySysAdmin && has(sysAdmin.bit))
    }

    /// Why the kernel refused to load BPF programs with EPERM, and what to do about it.
    public static func bpfRefused() -> String {
        do { try check([bpf, perfmon]) } catch { return "\(error)" }
        // Capabilities count in the user namespace that holds them, and BPF asks for them in
        // the host's: "0 0 4294967295" in uid_map means this is the host's.
        let map = (try? KernelFile.text("/proc/self/uid_map")) ?? ""
        if map.split(whereSeparator: \.isWhitespace) != ["0", "0", "4294967295"] {
            return "the kernel refused to load BPF programs (EPERM) although klab holds CAP_BPF: klab runs in a user namespace "
                + "(a rootless container?), and BPF needs the capability in the host's: run the container as root (sudo podman run …)"
        }
        return "the kernel refused to load BPF programs (EPERM) although klab holds CAP_BPF and CAP_PERFMON: "
            + "is the kernel locked down (cat /sys/kernel/security/lockdown) or is BPF denied by a security module?"
    }

    /// Throws a `Requirement` naming every missing capability and how to grant it.
    static func check(_ needed: [Capability]) throws {
        guard let set = effective() else { return }  // no /proc: the calls themselves will say
        var missing: [Capability] = []
        for c in needed where !held(c, in: set) && !missing.contains(c) {
            // A kernel without CAP_BPF or CAP_PERFMON asks for CAP_SYS_ADMIN instead.
            let asked = c.bit > lastCap ? sysAdmin : c
            if !missing.contains(asked) { missing.append(asked) }
        }
        guard !missing.isEmpty else { return }
        let what = missing.map { "\($0.name) (\($0.purpose)\($0.grantedBySysAdmin ? "; CAP_SYS_ADMIN also grants it" : ""))" }
        let how = Container.engine != nil
            ? Container.add("--cap-add " + missing.map { String($0.name.dropFirst(4)) }.joined(separator: ","))
            : "run klab as root with its full capability set (sudo klab …), not from a shell that dropped capabilities"
        throw Requirement("missing capabilit\(missing.count == 1 ? "y" : "ies") \(what.joined(separator: " and ")): \(how)")
    }
}
