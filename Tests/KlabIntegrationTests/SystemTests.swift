import Foundation
import KlabSystem
import Testing

/// What klab needs from the machine, tried the ways a container or a busy host gets it wrong:
/// a long mountinfo, two labs at once, a dead run's cgroup, and each capability taken away.
@Suite(.serialized, .scratch, .enabled(if: Privileged.enabled))
struct SystemTests {
    /// A mountinfo of more than 64 KiB whose cgroup2 line comes last (a mount namespace with
    /// hundreds of bind mounts, cgroup2 mounted again after them): klab still finds cgroup2.
    @Test func cgroup2FoundPastTheFirst64KiBOfMountinfo() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cgroup2 = try #require(Mounts.find(type: "cgroup2"))
        // Unshared with private propagation: nothing here reaches the machine's mounts, and
        // they all go when klab, the namespace's last process, exits.
        let script = """
            set -e
            for m in $(grep ' - cgroup2 ' /proc/self/mountinfo | cut -d' ' -f5); do umount "$m"; done
            mkdir -p "$D/src"
            i=0
            while [ $i -lt 600 ]; do
                m="$D/bind-mounts-that-make-mountinfo-long/mount-point-number-$i"
                mkdir -p "$m"
                mount --bind "$D/src" "$m"
                i=$((i + 1))
            done
            mount -t cgroup2 none "$CG"
            cat /proc/self/mountinfo > "$D/mountinfo"
            exec "$KLAB" schema
            """
        let r = try run("/usr/bin/unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c", script],
                        environment: ["D": dir, "CG": cgroup2, "KLAB": klabBinary])
        let mountinfo = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/mountinfo"))
        let line = try #require(mountinfo.range(of: Data(" - cgroup2 ".utf8)), "no cgroup2 line in the namespace's mountinfo")
        #expect(mountinfo.count > 65536)
        #expect(line.lowerBound > 65536, "the cgroup2 line starts at byte \(line.lowerBound)")
        #expect(r.status == 0, "klab schema exited \(r.status): \(r.stderr)")
        #expect(r.stdout.contains("SOCKET_CREATE"))
    }

    /// Two klab runs at once, each PID 1 of its own PID namespace as in two containers: two
    /// cgroups, and neither run removes the other's.
    @Test(.pidOneCgroups) func twoLabsAtOnceGetTheirOwnCgroups() throws {
        let dir = try temporaryDirectory()
        var left = "\(dir) (the results of both runs)"
        defer { if left.isEmpty { try? FileManager.default.removeItem(atPath: dir) } else { print("SystemTests left \(left)") } }
        let go = "\(dir)/go"
        try """
            name: hold
            timeout: 120s
            steps:
              - socket: u udp
              - run: [sh, -c, "while [ ! -e \(go) ]; do sleep 0.05; done"]
                timeout: 110s
            """.write(toFile: "\(dir)/hold.yaml", atomically: false, encoding: .utf8)
        let runs = try ["a", "b"].map { name -> (Process, Pipe) in
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
            p.arguments = ["--pid", "--fork", "--mount-proc", klabBinary, "run", "\(dir)/hold.yaml", "--out", "\(dir)/\(name)"]
            let out = Pipe()
            p.standardOutput = out
            p.standardError = out
            try p.run()
            return (p, out)
        }
        defer { for (p, _) in runs where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        // klab is unshare's child; its cgroup is its "0::" line once it has moved in.
        func cgroup(of unshare: Process) -> String? {
            let pid = unshare.processIdentifier
            guard let children = try? KernelFile.text("/proc/\(pid)/task/\(pid)/children"),
                  let klab = children.split(separator: " ").first,
                  let lines = try? KernelFile.text("/proc/\(klab)/cgroup"),
                  let line = lines.split(separator: "\n").first(where: { $0.hasPrefix("0::") && $0.contains("/klab-") }) else { return nil }
            return String(line.dropFirst(3))
        }
        var cgroups: [String?] = [nil, nil]
        while cgroups.contains(nil) && runs.allSatisfy({ $0.0.isRunning }) {
            cgroups = runs.map { cgroup(of: $0.0) }
            usleep(20_000)
        }
        _ = FileManager.default.createFile(atPath: go, contents: nil)
        for (p, _) in runs { p.waitUntilExit() }
        let outputs = runs.map { String(decoding: $0.1.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) }
        let a = try #require(cgroups[0], "run a never entered a lab cgroup:\n\(outputs[0])")
        let b = try #require(cgroups[1], "run b never entered a lab cgroup:\n\(outputs[1])")
        // Both are PID 1: the name alone would not tell them apart.
        #expect(a.split(separator: "/").last?.hasPrefix("klab-1-") == true, "\(a)")
        #expect(a != b, "both runs used \(a)")
        for (i, (p, _)) in runs.enumerated() {
            #expect(p.terminationStatus == 0, "run \(i) exited \(p.terminationStatus):\n\(outputs[i])")
            #expect(outputs[i].contains("hold: PASSED"), "\(outputs[i])")
        }
        let root = try #require(Mounts.find(type: "cgroup2"))
        for c in [a, b] { #expect(!FileManager.default.fileExists(atPath: root + c), "\(root + c) was left behind") }
        if runs.allSatisfy({ $0.0.terminationStatus == 0 }) { left = "" }
    }

    /// A cgroup left by a klab that died is removed at the next start; a live klab's, a PID
    /// reused by another process and names klab does not give are left alone.
    @Test func deadRunsCgroupIsReclaimedAndOthersStay() throws {
        let root = try #require(Mounts.find(type: "cgroup2"))
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["60"]
        try sleeper.run()
        let dead = try #require(LabCgroup.Owner(pid: sleeper.processIdentifier))
        kill(sleeper.processIdentifier, SIGKILL)
        sleeper.waitUntilExit()
        let me = try #require(LabCgroup.Owner(pid: getpid()), "no /proc/self/stat")
        let gone = ["klab-\(dead.pid)-\(dead.start!)-0badf00d", "klab-\(me.pid)-\(me.start! + 1)-0badf00d"]
        let stay = ["klab-\(me.pid)-\(me.start!)-0badf00d", "klab-testing", "klab-\(me.pid)-x-0badf00d"]
        for name in gone + stay { #expect(mkdir("\(root)/\(name)", 0o755) == 0, "mkdir \(root)/\(name): \(Errno.text(errno))") }
        defer { for name in gone + stay { rmdir("\(root)/\(name)") } }

        let r = try klab(["schema"])
        #expect(r.status == 0, "\(r.stderr)")
        for name in gone { #expect(!FileManager.default.fileExists(atPath: "\(root)/\(name)"), "\(name) was not reclaimed") }
        for name in stay { #expect(FileManager.default.fileExists(atPath: "\(root)/\(name)"), "\(name) was removed") }
    }

    /// klab in a cgroup namespace of its own below the cgroup2 it sees mounted (a container
    /// with a private cgroup namespace, given the host's hierarchy): /proc/self/cgroup then
    /// names no folder of that mount, so klab says so (exit 69) before it makes anything.
    @Test func cgroupNamespaceBelowTheMountIsNamed() throws {
        let dir = try temporaryDirectory()
        let root = try #require(Mounts.find(type: "cgroup2"))
        let below = "\(root)/klabtest-cgns-\(UUID().uuidString.prefix(8))"
        #expect(mkdir(below, 0o755) == 0, "mkdir \(below): \(Errno.text(errno))")
        defer { rmdir(below) }
        let r = try run("/bin/sh", ["-c", "echo $$ > \"$CG/cgroup.procs\" && exec unshare --cgroup --fork \"$KLAB\" run lab/scenarios/icmp-echo.yaml --out \"$D/results\""],
                        environment: ["CG": below, "KLAB": klabBinary, "D": dir])
        #expect(r.status == 69, "\(r.stdout)\(r.stderr)")
        #expect(r.stderr == "klab: klab runs in a cgroup namespace of its own, below the root of the cgroup2 mounted at \(root), "
            + "so it cannot find its own cgroup there: run klab in the cgroup namespace that mounted it (not under unshare --cgroup)\n")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/results"))
    }

    /// Each capability klab needs, taken from the bounding set of a root klab: exit 69 and one
    /// line naming it, before anything is made. CAP_BPF and CAP_PERFMON are named for a
    /// command that needs no namespaces (klab schema) when CAP_SYS_ADMIN, which grants them
    /// too, is also gone.
    @Test(arguments: [
        (["net_admin"], ["run"], "CAP_NET_ADMIN"), (["sys_admin"], ["run"], "CAP_SYS_ADMIN"), (["net_raw"], ["run"], "CAP_NET_RAW"),
        (["sys_admin", "bpf"], ["schema"], "CAP_BPF"), (["sys_admin", "perfmon"], ["schema"], "CAP_PERFMON"),
    ])
    func missingCapabilityIsNamed(dropped: [String], command: [String], name: String) throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let args = command == ["run"] ? ["run", "lab/scenarios/icmp-echo.yaml", "--out", "\(dir)/results"] : command
        let drop = dropped.map { "-" + $0 }.joined(separator: ",")
        let r = try run("/usr/bin/setpriv", ["--bounding-set=\(drop)", "--inh-caps=\(drop)", klabBinary] + args)
        #expect(r.status == 69, "\(r.stdout)\(r.stderr)")
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("missing capability \(name) ("), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/results"))
    }

    /// Without CAP_SYS_ADMIN but with CAP_BPF and CAP_PERFMON, the tracer alone still works:
    /// klab asks for no more than it needs.
    @Test func tracerNeedsNoSysAdminWithBPFAndPerfmon() throws {
        let r = try run("/usr/bin/setpriv", ["--bounding-set=-sys_admin", "--inh-caps=-sys_admin", klabBinary, "schema"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("SOCKET_CREATE"))
    }
}
