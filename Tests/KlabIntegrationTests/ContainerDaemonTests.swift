import Foundation
import KlabSystem
import Testing

/// The image's default command, klab daemon, run detached with README's `docker run -d` line
/// (through podman, with the test's own folders for the socket and data volumes) and driven
/// from the host by the host's klab through the socket on the volume; then stopped with a lab
/// up, which must leave nothing of it on the host. Without a capability or mount of that
/// line, the daemon must say in one line which flag to add, and exit 69.
extension ContainerTests {
    /// README's `docker run -d` line (with its continuation lines) for the daemon.
    static func daemonRunLine() throws -> String {
        let readme = try String(contentsOfFile: "\(packageRoot)/README.md", encoding: .utf8)
        let section = try #require(readme.components(separatedBy: "## Running in a container").dropFirst().first, "no container section in README.md")
        let start = try #require(section.range(of: "docker run -d "), "no `docker run -d` line in README's container section")
        var lines: [Substring] = []
        for l in section[start.lowerBound...].split(separator: "\n", omittingEmptySubsequences: false) {
            lines.append(l)
            if !l.hasSuffix("\\") { break }
        }
        return lines.joined(separator: "\n")
    }

    @Test(.timeLimit(.minutes(30)))
    func daemonImageServesTheHostThroughItsSocketVolume() throws {
        let dir = try temporaryDirectory()
        let tag = UUID().uuidString.prefix(8).lowercased()
        let image = "localhost/klab-test:\(tag)"
        let build = try run("\(packageRoot)/lab/container", ["build", image])
        defer { _ = try? podman(["rmi", "--force", image]) }
        try #require(build.status == 0, "lab/container build exited \(build.status):\n\(build.stdout.suffix(3000))\(build.stderr.suffix(2000))")

        // The Dockerfile's header gives README's line; its default command is the daemon on its volumes.
        let dockerfile = try String(contentsOfFile: "\(packageRoot)/Dockerfile", encoding: .utf8)
        let header = dockerfile.split(separator: "\n").filter { $0.hasPrefix("#   ") }.map { $0.dropFirst(4).trimmingCharacters(in: .whitespaces) }
        let readmeLine = try Self.daemonRunLine()
        for l in readmeLine.split(separator: "\n").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            #expect(header.contains(l), "the Dockerfile's header lacks README's '\(l)'")
        }
        let inspect = try podman(["image", "inspect", "--format", "{{json .Config.Cmd}} {{json .Config.Volumes}}", image])
        #expect(inspect.stdout.contains("[\"daemon\"]") && inspect.stdout.contains("/run/klab") && inspect.stdout.contains("/var/lib/klab"), "\(inspect.stdout)\(inspect.stderr)")

        // README's line on the test's own folders (and cgroup2 where this host has it). The
        // socket's folder as README makes it: set-group-ID, its group `daemon` (Debian has it)
        // standing in for klab.
        let cgroup2 = try #require(Mounts.find(type: "cgroup2"))
        let (socketDir, data, name) = ("\(dir)/run", "\(dir)/data", "klab-test-daemon-\(tag)")
        let group = try #require(getgrnam("daemon")).pointee.gr_gid
        for d in [socketDir, data] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        #expect(chown(socketDir, 0, group) == 0 && chmod(socketDir, 0o2770) == 0)
        var line = readmeLine.replacingOccurrences(of: "docker run", with: "\"$KLAB_ROOT/lab/container\" podman run")
        for (from, to) in [("--name klab ", "--name \(name) "), ("-v /run/klab:", "-v \(socketDir):"), ("-v /var/lib/klab:", "-v \(data):")]
            + (cgroup2 == "/sys/fs/cgroup" ? [] : [("-v /sys/fs/cgroup:/sys/fs/cgroup", "-v \(cgroup2):\(cgroup2)")]) {
            try #require(line.contains(from), "'\(from)' is not in README's daemon line:\n\(line)")
            line = line.replacingOccurrences(of: from, with: to)
        }
        try #require(line.hasSuffix(" klab"), "README's daemon line does not end with the image, klab:\n\(line)")
        line = String(line.dropLast(4)) + image

        let before = try containerCgroups(in: cgroup2)
        defer {
            // On a failure: the container killed, its daemon's lab cgroup (empty then) removed.
            _ = try? podman(["rm", "--force", "--volumes", "--time", "0", name])
            for c in (try? containerCgroups(in: cgroup2)) ?? [] where !before.contains(c) { rmdir("\(cgroup2)/\(c)") }
        }
        // Foundation's Process sees its child end when a socket the child inherits closes;
        // podman hands its inherited descriptors on to conmon, which outlives `run -d` as long
        // as the container, so the line runs with only 0, 1 and 2 open, as from a shell.
        let closeInherited = #"for fd in /proc/$$/fd/*; do fd=${fd##*/}; if [ "$fd" -gt 2 ] && [ -e /proc/$$/fd/$fd ]; then eval "exec $fd>&-"; fi; done; "#
        let started = try run("/bin/bash", ["-c", "set -e; " + closeInherited + line], environment: ["KLAB_ROOT": packageRoot])
        try #require(started.status == 0, "the daemon's run line exited \(started.status):\n\(line)\n\(started.stdout)\(started.stderr)")
        func logs() -> String { ((try? podman(["logs", name])).map { $0.stdout + $0.stderr }) ?? "(no logs)" }
        let socket = "\(socketDir)/klab.sock"
        _ = try waitFor("the daemon in \(name) to serve \(socket)", seconds: 120) {
            var st = stat()
            if stat(socket, &st) == 0, st.st_mode & 0o777 == 0o660, try klab(["ls", "--socket", socket]).status == 0 { return true }
            let state = try podman(["inspect", "--format", "{{.State.Status}}", name]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            if state != "running" { throw DaemonTestError("the container is \(state), not serving:\n\(logs())") }
            return nil
        }

        // The socket on the host: root's (the daemon is root in the container), mode 0660, the
        // folder's group, whose members reach the daemon without root; others get one line.
        var st = stat()
        #expect(stat(socket, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK && st.st_uid == 0 && st.st_gid == group && st.st_mode & 0o777 == 0o660,
                "\(socket): uid \(st.st_uid) gid \(st.st_gid) mode \(String(st.st_mode, radix: 8))")
        let member = try run("/usr/bin/setpriv", ["--reuid=nobody", "--regid=nogroup", "--groups=daemon", "--", klabBinary, "ls", "--socket", socket])
        #expect(member.status == 0, "a member of the socket's group: \(member.stderr)")
        let outsider = try run("/usr/bin/setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", klabBinary, "ls", "--socket", socket])
        #expect(outsider.status == 69 && outsider.stderr.split(separator: "\n").count == 1 && outsider.stderr.contains(socket), "an outsider: \(outsider.stderr)")

        // A daemon starting on the host recovers the lab cgroups of dead klabs: the container's
        // daemon, whose PID 1 means another process there, must not be taken for one.
        let mine = try containerCgroups(in: cgroup2).filter { !before.contains($0) }
        #expect(mine.count == 1, "the container's daemon's lab cgroup: \(mine)")
        let host = try DaemonProcess.start()
        host.stop()
        #expect(mine.allSatisfy { !host.log().contains($0) }, "\(host.log())")
        #expect(try klab(["ls", "--socket", socket]).status == 0, "the container's daemon is gone after a daemon started on the host:\n\(logs())")

        // A shipped scenario from the host, through the socket: it passes and its results
        // folder lands on the host, fetched into --out, and on the data volume.
        let out = "\(dir)/out"
        let r = try klab(["run", "--daemon", "--socket", socket, "\(packageRoot)/lab/scenarios/tcp-handshake.yaml", "--out", out])
        #expect(r.status == 0, "klab run --daemon exited \(r.status):\n\(r.stdout.suffix(3000))\(r.stderr)\n\(logs().suffix(3000))")
        #expect(r.stdout.contains("PASS  tcp-handshake"), "\(r.stdout.suffix(3000))")
        for file in ["run.json", "events.bin", "capture.pcap", "events.jsonl", "verdicts.json"] {
            let size = (try? FileManager.default.attributesOfItem(atPath: "\(out)/tcp-handshake/\(file)")[.size] as? Int) ?? nil
            #expect((size ?? 0) > 0, "\(out)/tcp-handshake/\(file) on the host: \(size.map { "\($0) bytes" } ?? "missing")")
        }
        if let pcap = try? PcapFile(path: "\(out)/tcp-handshake/capture.pcap") {
            #expect(pcap.packets.count >= 3, "the host's capture.pcap holds \(pcap.packets.count) packets")
        }
        let runs = (try? FileManager.default.contentsOfDirectory(atPath: "\(data)/runs")) ?? []
        #expect(runs.count == 1 && FileManager.default.fileExists(atPath: "\(data)/runs/\(runs.first ?? "-")/results/capture.pcap"),
                "the run's folder on the data volume: \(runs)")

        // A lab's up, exec and down from the host.
        let wirePing = "\(packageRoot)/lab/scenarios/wire-ping.yaml"
        let up = try klab(["up", "--socket", socket, wirePing])
        let lab = up.stdout.split(separator: "\n").last.map(String.init) ?? ""
        try #require(up.status == 0 && lab.hasPrefix("lab-"), "klab up: \(up.stdout)\(up.stderr)")
        #expect(FileManager.default.fileExists(atPath: "\(data)/labs/\(lab)"), "no folder of \(lab) on the data volume")
        let ping = try klab(["exec", "--socket", socket, lab, "a", "--", "ping", "-n", "-c", "1", "-W", "2", "198.18.0.2"])
        #expect(ping.status == 0 && ping.stdout.contains("1 received"), "klab exec ping: \(ping.status)\n\(ping.stdout)\(ping.stderr)")
        let three = try klab(["exec", "--socket", socket, lab, "b", "--", "sh", "-c", "exit 3"])
        #expect(three.status == 3, "klab exec of `exit 3` exited \(three.status)")
        let down = try klab(["down", "--socket", socket, lab])
        #expect(down.status == 0, "klab down: \(down.stderr)")
        #expect(try !klab(["ls", "--socket", socket]).stdout.contains(lab), "\(lab) is still listed after klab down")
        #expect(!FileManager.default.fileExists(atPath: "\(data)/labs/\(lab)"), "\(lab)'s folder is still on the data volume")

        // A lab left up, a command running in it, then SIGTERM (podman stop; SIGKILL only
        // after 30 s): the daemon takes the lab down and removes the socket file.
        let kept = try klab(["up", "--socket", socket, wirePing])
        let keptLab = kept.stdout.split(separator: "\n").last.map(String.init) ?? ""
        try #require(kept.status == 0 && keptLab.hasPrefix("lab-"), "klab up: \(kept.stdout)\(kept.stderr)")
        let marker = "34\(Int.random(in: 1000...9999))"
        let client = Process()
        client.executableURL = URL(fileURLWithPath: klabBinary)
        client.arguments = ["exec", "--socket", socket, keptLab, "b", "--", "sleep", marker]
        client.standardOutput = FileHandle.nullDevice
        client.standardError = FileHandle.nullDevice
        try client.run()
        defer { if client.isRunning { client.terminate() } }
        let pid = try waitFor("the lab's sleep to start") { processes(with: marker).first }
        let namespace = try #require(netns(of: pid))
        let cgroupLine = (try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8))?.split(separator: "\n").first { $0.hasPrefix("0::") }
        let cgroup = cgroup2 + String(cgroupLine?.dropFirst(3) ?? "")
        #expect(cgroup.hasPrefix("\(cgroup2)/\(LabCgroup.prefix)1-"), "the lab's command is in \(cgroup), not in the daemon's lab cgroup")

        let stop = try podman(["stop", "--time", "30", name])
        #expect(stop.status == 0, "podman stop: \(stop.stderr)")
        let exit = try podman(["inspect", "--format", "{{.State.ExitCode}}", name]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(exit == "0", "the daemon exited \(exit) on SIGTERM (137: it was killed):\n\(logs().suffix(3000))")
        #expect(logs().contains("klab daemon stopped; removed /run/klab/klab.sock"), "\(logs().suffix(3000))")
        #expect(!FileManager.default.fileExists(atPath: socket), "the socket file is still on the host")
        #expect(processes(with: marker).isEmpty, "the lab's command still runs")
        #expect(!allNamespaces().contains(namespace), "the lab's network namespace is still held")
        #expect(!FileManager.default.fileExists(atPath: cgroup), "the lab cgroup \(cgroup) is still there")
        #expect(try containerCgroups(in: cgroup2) == before, "the container left its lab cgroup in \(cgroup2)")
        _ = try waitFor("the exec client to end") { client.isRunning ? nil : true }
        #expect(client.terminationStatus != 0, "the exec client did not see its command stop")

        // Each capability or mount left out: the daemon stops at its start with one line
        // naming the flag to add, exit 69, and no socket. BTF is masked by an empty folder:
        // podman's /sys shows the host's, other engines' may not. In the foreground, bounded.
        let empty = "\(dir)/empty"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        for (flag, replacement, hint) in [
            ("--cap-add NET_ADMIN,SYS_ADMIN,NET_RAW ", "", "CAP_SYS_ADMIN"),
            ("-v /sys/kernel/tracing:/sys/kernel/tracing ", "", "tracefs is not mounted: add -v /sys/kernel/tracing:/sys/kernel/tracing to podman run"),
            ("-v /sys/kernel/btf:/sys/kernel/btf:ro", "-v \(empty):/sys/kernel/btf:ro", "kernel BTF (/sys/kernel/btf/vmlinux) is missing"),
            ("--cgroupns host", "--cgroupns private", "add --cgroupns host to podman run"),
            ("--device /dev/net/tun ", "", "add --device /dev/net/tun to podman run"),
        ] {
            let without = line.replacingOccurrences(of: flag, with: replacement)
                .replacingOccurrences(of: "podman run -d --name \(name) ", with: "podman run --rm --name \(name)-without ")
            try #require(without != line && without.contains("--rm"), "'\(flag)' is not in the run line:\n\(line)")
            defer { _ = try? podman(["rm", "--force", "--time", "0", "\(name)-without"]) }
            let w = try run("/usr/bin/timeout", ["--kill-after=10", "120", "/bin/bash", "-c", closeInherited + without], environment: ["KLAB_ROOT": packageRoot])
            let lines = w.stderr.split(separator: "\n")
            #expect(w.status == 69, "without \(flag): exit \(w.status)\n\(w.stdout.suffix(2000))\(w.stderr.suffix(2000))")
            #expect(lines.count == 1 && lines[0].hasPrefix("klab: ") && lines[0].contains(hint), "without \(flag):\n\(w.stderr)")
            #expect(!FileManager.default.fileExists(atPath: socket), "without \(flag) the daemon made its socket")
        }
    }

    /// podman with the flags this kind of VM needs (lab/container podman).
    func podman(_ args: [String]) throws -> Finished { try run("\(packageRoot)/lab/container", ["podman"] + args) }
}
