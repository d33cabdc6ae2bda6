import Foundation
import Testing

/// lab/k8s/job.yaml's command, run with podman on ContainerTests' image as the Job's pods
/// would run it (no cluster is reachable here): indices 0 and 1, privileged, with the Job's
/// mounts and its volume, then `klab report` over that volume, on the host and as
/// lab/k8s/report.yaml runs it in the image.
extension ContainerTests {
    /// The values of `key:` lines in a manifest, in order (the manifests keep each of these
    /// on one line).
    static func values(_ key: String, in manifest: String) -> [String] {
        manifest.split(separator: "\n").compactMap { line in
            let t = line.trimmingCharacters(in: .whitespaces).drop { $0 == "-" }.trimmingCharacters(in: .whitespaces)
            return t.hasPrefix("\(key):") ? String(t.dropFirst(key.count + 1)).trimmingCharacters(in: .whitespaces) : nil
        }
    }

    /// A `command: [...]` line's words (a YAML flow sequence of quoted strings is JSON).
    static func command(in manifest: String) throws -> [String] {
        let line = try #require(values("command", in: manifest).first, "no command: line")
        return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String], "command: \(line) is not a list of strings")
    }

    func kubernetesJobRunsTwoIndices(image: String, dir: String, cgroup2: String) throws {
        let job = try String(contentsOfFile: "\(packageRoot)/lab/k8s/job.yaml", encoding: .utf8)
        let scenarios = shippedNames(in: "lab/scenarios", ending: ".yaml")
        #expect(Self.values("completionMode", in: job) == ["Indexed"])
        #expect(Self.values("completions", in: job) == ["\(scenarios.count)"], "the Job's completions must be the \(scenarios.count) shipped scenarios")
        #expect(Self.values("privileged", in: job) == ["true"])
        let command = try Self.command(in: job)
        let mounts = Self.values("mountPath", in: job)
        #expect(Set(mounts) == ["/results", "/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"], "\(mounts)")
        #expect(Self.values("path", in: job) == ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"], "the hostPaths")

        // A pod as the Job makes it: privileged, which under containerd or CRI-O on cgroup v2
        // also means the host's cgroup namespace; the hostPath mounts (cgroup2 where this host
        // has it); the volume.
        let results = "\(dir)/k8s/results"
        try FileManager.default.createDirectory(atPath: results, withIntermediateDirectories: true)
        func pod(_ index: Int?, _ command: [String]) throws -> Finished {
            var args = ["run", "--rm", "--privileged", "--cgroupns", "host"]
            for m in mounts {
                let host = m == "/results" ? results : m == "/sys/fs/cgroup" ? cgroup2 : m
                let inside = m == "/sys/fs/cgroup" ? cgroup2 : m
                args += ["-v", "\(host):\(inside)" + (m == "/sys/kernel/btf" ? ":ro" : "")]
            }
            if let index { args += ["-e", "JOB_COMPLETION_INDEX=\(index)"] }
            args += ["--entrypoint", command[0], image] + command.dropFirst()
            return try run("\(packageRoot)/lab/container", ["podman"] + args)
        }
        for index in [0, 1] {
            let r = try pod(index, command)
            #expect(r.status == 0, "index \(index): exit \(r.status)\n\(r.stdout.suffix(3000))\(r.stderr)")
            #expect(r.stdout.contains("\(scenarios[index]): PASSED"), "index \(index) is \(scenarios[index]):\n\(r.stdout.suffix(2000))")
            #expect(FileManager.default.fileExists(atPath: "\(results)/\(index)/\(scenarios[index])/verdicts.json"))
        }
        // One past the last scenario: exit 64, the count named, nothing written.
        let past = try pod(scenarios.count, command)
        #expect(past.status == 64 && past.stderr.contains("the Job's completions must be \(scenarios.count)"), "\(past.status) \(past.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "\(results)/\(scenarios.count)"))

        // klab report over the volume, as README says: both runs, passed, on this kernel.
        let r = try klab(["report", results, "--json", "\(dir)/k8s/report.json"])
        #expect(r.status == 0, "klab report: exit \(r.status)\n\(r.stdout)\(r.stderr)")
        let report = try json("\(dir)/k8s/report.json")
        let runs = report["runs"] as? [[String: Any]] ?? []
        #expect(runs.compactMap { $0["folder"] as? String } == [0, 1].map { "\(results)/\($0)/\(scenarios[$0])" })
        #expect(runs.allSatisfy { $0["passed"] as? Bool == true && ($0["judged"] as? Int ?? 0) > 0 }, "\(r.stdout)")
        var u = utsname()
        uname(&u)
        let kernel = withUnsafeBytes(of: u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        #expect((report["totals"] as? [String: Any])?["kernels"] as? [String: Int] == [kernel: 2], "\(r.stdout)")

        // lab/k8s/report.yaml's pod: the same report, kept on the volume.
        let reportPod = try String(contentsOfFile: "\(packageRoot)/lab/k8s/report.yaml", encoding: .utf8)
        let inImage = try run("\(packageRoot)/lab/container", ["podman", "run", "--rm", "-v", "\(results):/results", "--entrypoint",
                                                                try Self.command(in: reportPod)[0], image] + Self.command(in: reportPod).dropFirst())
        #expect(inImage.status == 0, "report pod: exit \(inImage.status)\n\(inImage.stdout)\(inImage.stderr)")
        #expect(inImage.stdout.contains("klab report: 2 results folders: 2 passed, 0 failed"), "\(inImage.stdout)")
        let md = (try? String(contentsOfFile: "\(results)/report.md", encoding: .utf8)) ?? ""
        #expect(md.contains("| PASS | \(scenarios[0]) |") && md.contains("| PASS | \(scenarios[1]) |"), "\(md)")
        #expect(FileManager.default.fileExists(atPath: "\(results)/report.json"))
    }
}
