import Foundation
import KlabSystem
import Testing

/// klab's image as a user builds and runs it: lab/container builds the Dockerfile with podman
/// from base images made of this machine's toolchain and Debian (made once, then cached in
/// podman's storage), and README's run line, as written there, runs a shipped scenario in it
/// whose results must land on the host. Without a mount or a capability from that line, klab
/// must say which flag to add. The build compiles klab in release mode: minutes of both
/// cores, so it never runs beside a timed test.
@Suite(.serialized, .scratch, .heavy, .pidOneCgroups, .enabled(if: Privileged.enabled && Privileged.outsideGuest("container test", "podman would build the image under TCG for hours; CI runs it on the host")
                                               && Privileged.has("/usr/bin/podman", from: "podman")))
struct ContainerTests {
    /// README's `docker run` line (from `mkdir -p results` to the end of its block), run with
    /// podman through lab/container (the flags this kind of VM needs) on `image`.
    static func runLine(image: String) throws -> String {
        let readme = try String(contentsOfFile: "\(packageRoot)/README.md", encoding: .utf8)
        let section = try #require(readme.components(separatedBy: "## Running in a container").dropFirst().first, "no container section in README.md")
        let block = try #require(section.components(separatedBy: "```").dropFirst().first, "no code block in README's container section")
        let start = try #require(block.range(of: "mkdir -p results"), "README's run line does not make results/ first")
        return String(block[start.lowerBound...])
            .replacingOccurrences(of: "docker run", with: "\"$KLAB_ROOT/lab/container\" podman run")
            .replacingOccurrences(of: " klab run ", with: " \(image) run ")
    }

    @Test(.timeLimit(.minutes(40)))
    func imageRunsAShippedScenarioWithTheDocumentedRunLine() throws {
        let dir = try temporaryDirectory()
        let image = "localhost/klab-test:\(UUID().uuidString.prefix(8).lowercased())"
        let build = try run("\(packageRoot)/lab/container", ["build", image])
        defer { _ = try? run("\(packageRoot)/lab/container", ["podman", "rmi", "--force", image]) }
        try #require(build.status == 0, "lab/container build exited \(build.status):\n\(build.stdout.suffix(3000))\(build.stderr.suffix(2000))")

        // The Dockerfile's header gives the same line as README.
        let header = try String(contentsOfFile: "\(packageRoot)/Dockerfile", encoding: .utf8)
            .split(separator: "\n").filter { $0.hasPrefix("#   ") }.map { $0.dropFirst(4).trimmingCharacters(in: .whitespaces) }
        for l in try ContainerTests.readmeRunLines() { #expect(header.contains(l), "the Dockerfile's header lacks README's '\(l)'") }

        // As README says: on a hybrid host cgroup2 is at /sys/fs/cgroup/unified.
        let cgroup2 = try #require(Mounts.find(type: "cgroup2"))
        var line = try ContainerTests.runLine(image: image)
        if cgroup2 != "/sys/fs/cgroup" {
            line = line.replacingOccurrences(of: "-v /sys/fs/cgroup:/sys/fs/cgroup", with: "-v \(cgroup2):\(cgroup2)")
        }
        let before = try containerCgroups(in: cgroup2)
        let r = try run("/bin/bash", ["-c", "set -e; cd \"$D\"; " + line], environment: ["D": dir, "KLAB_ROOT": packageRoot])
        #expect(r.status == 0, "the run line exited \(r.status):\n\(line)\n\(r.stdout.suffix(3000))\(r.stderr)")
        #expect(r.stdout.contains("tcp-handshake: PASSED"), "\(r.stdout.suffix(3000))")
        for file in ["capture.pcap", "events.jsonl", "verdicts.json", "run.json"] {
            #expect(FileManager.default.fileExists(atPath: "\(dir)/results/tcp-handshake/\(file)"), "no \(file) on the host")
        }
        let pcap = try PcapFile(path: "\(dir)/results/tcp-handshake/capture.pcap")
        #expect(pcap.packets.count >= 3, "the host's capture.pcap holds \(pcap.packets.count) packets")
        #expect(try containerCgroups(in: cgroup2) == before, "the container left its lab cgroup in \(cgroup2)")

        // The image has every program the shipped scenarios run.
        let list = try run("\(packageRoot)/lab/container", ["podman", "run", "--rm", image, "run", "--list"])
        #expect(list.status == 0 && list.stdout.contains("tcp-handshake "), "\(list.stdout)\(list.stderr)")
        #expect(!list.stdout.contains("cannot run here"), "\(list.stdout)")

        // Each flag left out: exit 69 and the flag to add, in podman's terms.
        for (flag, replacement, hint) in [
            ("-v \(cgroup2):\(cgroup2) ", "", "add -v \(cgroup2):\(cgroup2)"),
            ("-v /sys/kernel/tracing:/sys/kernel/tracing ", "", "add -v /sys/kernel/tracing:/sys/kernel/tracing to podman run"),
            ("--device /dev/net/tun ", "", "add --device /dev/net/tun to podman run"),
            ("NET_ADMIN,SYS_ADMIN,NET_RAW", "NET_ADMIN,SYS_ADMIN", "add --cap-add NET_RAW to podman run"),
            ("--cgroupns host", "--cgroupns private", "add --cgroupns host to podman run"),
        ] {
            let without = line.replacingOccurrences(of: flag, with: replacement)
            try #require(without != line, "'\(flag)' is not in the run line:\n\(line)")
            let out = "\(dir)/without-\(flag.filter(\.isLetter).prefix(20))"
            let w = try run("/bin/bash", ["-c", "set -e; mkdir -p \"$D\"; cd \"$D\"; " + without], environment: ["D": out, "KLAB_ROOT": packageRoot])
            #expect(w.status == 69, "without \(flag): exit \(w.status)\n\(w.stdout.suffix(2000))\(w.stderr)")
            let lines = w.stderr.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].hasPrefix("klab: ") && lines[0].contains(hint), "without \(flag):\n\(w.stderr)")
            #expect(!FileManager.default.fileExists(atPath: "\(out)/results/tcp-handshake"), "without \(flag) klab made results")
        }

        // The same image as lab/k8s/job.yaml's pods run it (KubernetesJobTests.swift).
        try kubernetesJobRunsTwoIndices(image: image, dir: dir, cgroup2: cgroup2)
    }

    /// README's run line, one line each, as the Dockerfile's header must also give it.
    static func readmeRunLines() throws -> [String] {
        try runLine(image: "klab").replacingOccurrences(of: "\"$KLAB_ROOT/lab/container\" podman run", with: "docker run")
            .split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// Lab cgroups of a klab that was PID 1 (klab-1-…), as in a container: the only other test
    /// that makes them (SystemTests' two PID namespaces) never runs beside these (.pidOneCgroups).
    func containerCgroups(in root: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: root).filter { $0.hasPrefix(LabCgroup.prefix + "1-") }.sorted()
    }
}
