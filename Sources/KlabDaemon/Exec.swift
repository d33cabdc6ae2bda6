import Foundation
import Hummingbird
import KlabClient
import KlabScenario
import NIOCore

/// A command in a lab host, its output streamed back as it comes (application/x-ndjson:
/// {"output": …} lines, then {"exit_status": N} or {"signal": N}). A client that goes away
/// before the end stops the command: its process group gets SIGTERM, then SIGKILL after 2 s.
/// So does the lab's removal.
enum Exec {
    static func start(_ e: API.Exec, in entry: State.LabEntry, state: State) async throws -> Response {
        let (pid, output) = try await onThread("klab-exec") { try entry.live.spawn(host: e.host, e.argv) }
        state.track(pid, in: entry, running: true)
        let body = ResponseBody { writer in
            var done = false
            defer {
                if !done { stop(pid) }
                state.track(pid, in: entry, running: false)
            }
            let fd = open(output, O_RDONLY | O_CLOEXEC)
            defer { if fd >= 0 { close(fd) } }
            var pending: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            var exited: Int32?
            var quietSince = ContinuousClock.now
            while true {
                let n = fd < 0 ? 0 : chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 { pending += chunk[0..<n] }
                // Whole lines (a character never spans one), or everything at the end.
                let cut = exited != nil && n <= 0 ? pending.count : (pending.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? (pending.count > 32768 ? pending.count : 0))
                if cut > 0 {
                    try await writer.write(line(API.ExecLine(output: String(decoding: pending[0..<cut], as: UTF8.self))))
                    pending.removeFirst(cut)
                    quietSince = .now
                }
                if n > 0 { continue }
                if let status = exited {
                    let end = status & 0x7f == 0 ? API.ExecLine(exit_status: Int((status >> 8) & 0xff)) : API.ExecLine(signal: Int(status & 0x7f))
                    try await writer.write(line(end))
                    try await writer.finish(nil)
                    return
                }
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid {
                    exited = status
                    done = true
                    continue
                }
                // A blank line now and then: a client that left makes the write fail.
                if ContinuousClock.now - quietSince > .seconds(1) {
                    try await writer.write(ByteBuffer(string: "\n"))
                    quietSince = .now
                }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: body)
    }

    static func line(_ l: API.ExecLine) throws -> ByteBuffer {
        var data = try Routes.encoder.encode(l)
        data.append(UInt8(ascii: "\n"))
        return ByteBuffer(bytes: data)
    }

    /// SIGTERM to the command's process group, SIGKILL after 2 s, and reaps it.
    static func stop(_ pid: pid_t) {
        kill(-pid, SIGTERM)
        var status: Int32 = 0
        for _ in 0..<200 {
            if waitpid(pid, &status, WNOHANG) != 0 { return }
            usleep(10_000)
        }
        kill(-pid, SIGKILL)
        waitpid(pid, &status, 0)
    }
}
