import CFuzzer
import Glibc
import KlabPacket
import KlabResults
import KlabScenario
import KlabSchema

/// What the input is fed to; KLAB_FUZZ_TARGET names it (lab/fuzz/run sets it).
enum Target: String, CaseIterable {
    /// A scenario file, as `klab validate` reads it: bounded read, UTF-8, YAML limits, the reader.
    case scenario
    /// A packetdrill script (.pkt), as `klab validate` reads it: bounded read, UTF-8, the
    /// grammar, the semantic checks.
    case pkt
    /// A packet line of a scenario (`S 0:0(0) win 65535 <mss 1460>`), parsed and built.
    case packetLine = "packet-line"
    /// IPv4 packets from a capture or a TUN (KlabPacket).
    case packet
    /// events.bin, the tracer's records, after one byte: the reader's buffer size (1-256), so
    /// records and refills cross the buffer's end.
    case events
    /// capture.pcap with capture.frames: byte 0 is the run's link count, byte 1 the readers'
    /// buffer size, bytes 2-3 (little endian) the length of the pcap part; the rest is
    /// capture.frames.
    case pcap
}

let target: Target = {
    let name = getenv("KLAB_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let t = Target(rawValue: name) else {
        print("set KLAB_FUZZ_TARGET to one of: \(Target.allCases.map(\.rawValue).joined(separator: ", "))")
        exit(64)
    }
    return t
}()

/// Where inputs are written for the readers that take a path, in /dev/shm (memory).
let folder: String = {
    let d = "/dev/shm/klab-fuzz.\(getpid())"
    mkdir(d, 0o700)
    atexit { rmdir("/dev/shm/klab-fuzz.\(getpid())") }
    return d
}()

func write(_ bytes: UnsafeRawBufferPointer, to name: String) -> String {
    let path = "\(folder)/\(name)"
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    precondition(fd >= 0, "open \(path)")
    var done = 0
    while done < bytes.count {
        let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
        precondition(n > 0, "write \(path)")
        done += n
    }
    close(fd)
    return path
}

/// Line breaks as YAML counts them: \n, \r\n, \r, NEL (C2 85), LS and PS (E2 80 A8/A9).
func lineBreaks(_ b: UnsafeRawBufferPointer) -> Int {
    var n = 0
    for i in b.indices {
        switch b[i] {
        case 0x0A: n += 1
        case 0x0D where i + 1 == b.count || b[i + 1] != 0x0A: n += 1
        case 0xC2 where i + 1 < b.count && b[i + 1] == 0x85: n += 1
        case 0xE2 where i + 2 < b.count && b[i + 1] == 0x80 && (b[i + 2] == 0xA8 || b[i + 2] == 0xA9): n += 1
        default: break
        }
    }
    return n
}

/// A rejected scenario must say where: file:line:column inside the file.
func checkLocated(_ e: ScenarioError, lines: Int, file: String) {
    guard let at = e.location else { fatalError("no file:line:column for: \(e)") }
    precondition(at.file == file && at.line >= 1 && at.line <= lines + 1 && at.column >= 1, "bad location \(at) for: \(e)")
}

/// libFuzzer's LLVMFuzzerTestOneInput: one input, fed to `target`.
func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    switch target {
    case .scenario:
        let path = write(input, to: "fuzz.yaml")
        defer { unlink(path) }
        do {
            let s = try Scenario.load(path)
            _ = s.steps.map(\.text)
        } catch {
            checkLocated(error, lines: lineBreaks(input), file: path)
        }
    case .pkt:
        let path = write(input, to: "fuzz.pkt")
        defer { unlink(path) }
        do {
            let script = try PktParser.load(path, defines: PktParser.ipv4Defines)
            _ = "\(script)"
        } catch {
            checkLocated(error, lines: lineBreaks(input), file: path)
        }
    case .packetLine:
        let line = String(decoding: input, as: UTF8.self)
        let loc = SourceLocation(file: "fuzz", line: 1, column: 1)
        if let spec = try? PacketNotation.parse(line, at: loc) { _ = "\(spec)" }
    case .packet:
        if let p = try? Packet.parse(input) {
            _ = p.description
            if let bytes = try? p.serialize(checksums: .preserve) {
                let again = try? Packet.parse(bytes)
                precondition(again != nil, "a parsed packet, serialized, does not parse: \(p)")
            }
        }
        if let q = try? Packet.parseQuoted(input) { _ = q.description }
        if let v = IPv4View(input) { _ = PacketIdentity(v) }
    case .events:
        guard input.count >= 1 else { return 0 }
        let path = write(UnsafeRawBufferPointer(rebasing: input[1...]), to: "events.bin")
        defer { unlink(path) }
        guard let r = try? EventReader(path, bufferSize: Int(input[0]) + 1) else { return 0 }
        // (No time-order check: records more than the 20 ms hold-back late come out late, by design.)
        while let e = try? r.next() {
            _ = (e.name, e.probeName, r.peek(0)?.name, r.peek(3)?.probeName)
        }
        _ = r.cutShort?.description
    case .pcap:
        guard input.count >= 4 else { return 0 }
        let links = Int(input[0] % 8)
        let split = min(4 + (Int(input[2]) | Int(input[3]) << 8), input.count)
        let pcap = write(UnsafeRawBufferPointer(rebasing: input[4..<split]), to: "capture.pcap")
        let frames = write(UnsafeRawBufferPointer(rebasing: input[split...]), to: "capture.frames")
        defer { unlink(pcap); unlink(frames) }
        guard let r = try? FrameReader(pcap: pcap, frames: frames, offsetNs: 0, linkCount: links, bufferSize: Int(input[1]) + 1) else { return 0 }
        while let f = try? r.next() {
            precondition(f.link < links && f.bytes.count <= f.length, "frame \(f.number) out of bounds")
            _ = (f.packet, f.delivered, f.identity)
        }
        _ = r.cutShort?.description
    }
    return 0
}

_ = target  // an unknown target stops here, before libFuzzer starts
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzz($0, $1) })
