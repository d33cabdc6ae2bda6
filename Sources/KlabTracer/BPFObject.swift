import CLibbpf
import Foundation
import KlabSchema
import KlabSystem

/// One embedded BPF object, opened and loaded with only the programs klab needs. Programs
/// the running kernel cannot take are switched off (with the reason kept) and the load is
/// retried, so one missing function or tracepoint does not cost the others. Closed (its
/// programs and maps freed) when the last owner lets go of it.
final class BPFObject {
    private var object: OpaquePointer
    private let bytes: [UInt8]  // libbpf reads the buffer until load
    private let name: String
    /// program name → why it is not loaded.
    private(set) var failures: [String: String] = [:]

    private init(object: OpaquePointer, bytes: [UInt8], name: String) {
        (self.object, self.bytes, self.name) = (object, bytes, name)
    }

    static func load(hex: StaticString, name: String, needed: Set<String>, reuse base: BPFObject?) throws -> BPFObject {
        let bytes = decodeHex(hex)
        var failures: [String: String] = [:]
        let btf = btf__load_vmlinux_btf()
        defer { if let btf { btf__free(btf) } }
        for attempt in 0..<16 {
            let obj = try open(bytes, name)
            var wanted = 0
            var prog = bpf_object__next_program(obj, nil)
            while let p = prog {
                let program = String(cString: bpf_program__name(p))
                let section = String(cString: bpf_program__section_name(p))
                var on = needed.contains(program) && failures[program] == nil
                if on, let missing = missingTarget(section, btf) {
                    failures[program] = missing
                    on = false
                }
                bpf_program__set_autoload(p, on)
                if on { wanted += 1 }
                prog = bpf_object__next_program(obj, p)
            }
            if let base {
                var map = bpf_object__next_map(obj, nil)
                while let m = map {
                    if let shared = base.map(String(cString: bpf_map__name(m))) { bpf_map__reuse_fd(m, bpf_map__fd(shared)) }
                    map = bpf_object__next_map(obj, m)
                }
            }
            if wanted == 0 && base != nil {
                bpf_object__close(obj)
                throw TracerError("no program needed or present in this kernel", errno: 0)
            }
            LibbpfLog.clear()
            let err = bpf_object__load(obj)
            if err == 0 {
                let o = BPFObject(object: obj, bytes: bytes, name: name)
                o.failures = failures
                return o
            }
            bpf_object__close(obj)
            let reason = Errno.text(-err)
            // A backend the kernel refuses outright (fentry here: EPERM) fails every program.
            if base != nil && (-err == EPERM || -err == 524 /* ENOTSUPP */ || -err == EOPNOTSUPP) {
                throw TracerError("bpf_object__load(\(name))", errno: -err, hint: "the kernel refuses every program of this backend")
            }
            guard let failed = LibbpfLog.failedProgram(), failures[failed] == nil, attempt < 15 else {
                if base == nil && -err == EPERM { throw Requirement(Capability.bpfRefused()) }
                throw TracerError("bpf_object__load(\(name))", errno: -err, detail: "\n" + LibbpfLog.tail())
            }
            failures[failed] = "load failed: \(reason): \(LibbpfLog.verifierLastLine())"
        }
        throw TracerError("loading the \(name) BPF object kept failing", errno: 0)
    }

    private static func open(_ bytes: [UInt8], _ name: String) throws -> OpaquePointer {
        let obj = bytes.withUnsafeBytes { b in
            name.withCString { cname in
                var opts = bpf_object_open_opts()
                opts.sz = MemoryLayout<bpf_object_open_opts>.size
                opts.object_name = cname
                return bpf_object__open_mem(b.baseAddress, b.count, &opts)
            }
        }
        guard let obj, libbpf_get_error(UnsafeRawPointer(obj)) == 0 else {
            throw TracerError("bpf_object__open_mem(\(name))", errno: errno, detail: LibbpfLog.tail())
        }
        return obj
    }

    /// Checks a program's target against the kernel's BTF before loading: a tp_btf needs its
    /// btf_trace_ typedef, an fentry its function.
    private static func missingTarget(_ section: String, _ btf: OpaquePointer?) -> String? {
        guard let btf, let slash = section.firstIndex(of: "/") else { return nil }
        let kind = section[..<slash], target = String(section[section.index(after: slash)...])
        switch kind {
        case "tp_btf":
            return btf__find_by_name_kind(btf, "btf_trace_" + target, UInt32(BTF_KIND_TYPEDEF)) < 0
                ? "tracepoint \(target) is not in this kernel" : nil
        case "fentry", "fexit":
            return btf__find_by_name_kind(btf, target, UInt32(12)  /* BTF_KIND_FUNC: an enum in two headers, ambiguous in Swift */) < 0
                ? "\(target) is not a traceable function in this kernel (inlined or absent)" : nil
        default:
            return nil
        }
    }

    /// Every program in the embedded objects, by name (opens them without loading: no root).
    static func programNames() throws -> Set<String> {
        var names = Set<String>()
        for (hex, name) in [(bpfObject_klab, "klab"), (bpfObject_klab_fentry, "klab_fentry"), (bpfObject_klab_kprobe, "klab_kprobe")] {
            let bytes = decodeHex(hex)
            let obj = try open(bytes, name)
            var prog = bpf_object__next_program(obj, nil)
            while let p = prog {
                names.insert(String(cString: bpf_program__name(p)))
                prog = bpf_object__next_program(obj, p)
            }
            bpf_object__close(obj)
        }
        return names
    }

    func map(_ name: String) -> OpaquePointer? { bpf_object__find_map_by_name(object, name) }

    /// The loaded program of that name, if it is loaded.
    func program(_ name: String) -> OpaquePointer? {
        guard let p = bpf_object__find_program_by_name(object, name), bpf_program__fd(p) >= 0 else { return nil }
        return p
    }

    deinit { bpf_object__close(object) }
}

private func decodeHex(_ s: StaticString) -> [UInt8] {
    s.withUTF8Buffer { hex in
        func v(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : c - 87 }
        return stride(from: 0, to: hex.count - 1, by: 2).map { v(hex[$0]) << 4 | v(hex[$0 + 1]) }
    }
}

/// libbpf's messages, kept instead of printed, so a failure can quote the verifier.
enum LibbpfLog {
    nonisolated(unsafe) static var lines: [String] = []
    static let lock = NSLock()

    /// KLAB_DEBUG_LIBBPF=1 also prints every libbpf message (verifier logs included) to stderr.
    static let echo = ProcessInfo.processInfo.environment["KLAB_DEBUG_LIBBPF"] == "1"

    static func install() {
        _ = libbpf_set_print { level, format, args in
            guard let format, let args else { return 0 }
            var buf = [CChar](repeating: 0, count: 1 << 16)  // verifier logs come as one message
            vsnprintf(&buf, buf.count, format, args)
            let line = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if LibbpfLog.echo { FileHandle.standardError.write(Data(line.utf8)) }
            LibbpfLog.lock.withLock {
                LibbpfLog.lines.append(line)
                if LibbpfLog.lines.count > 400 { LibbpfLog.lines.removeFirst(200) }
            }
            return 0
        }
    }

    static func clear() { lock.withLock { lines = [] } }
    static func tail(_ n: Int = 15) -> String { lock.withLock { lines.suffix(n).joined() } }

    /// The program named in "prog 'NAME': failed to load".
    static func failedProgram() -> String? {
        lock.withLock {
            for l in lines.reversed() {
                guard let r = l.range(of: "prog '"), let end = l[r.upperBound...].firstIndex(of: "'") else { continue }
                if l.contains("failed to load") || l.contains("failed to resolve") || l.contains("relo") {
                    return String(l[r.upperBound..<end])
                }
            }
            return nil
        }
    }

    /// The verifier's last complaint, the line before "processed N insns" or the END marker.
    static func verifierLastLine() -> String {
        lock.withLock {
            let text = lines.joined().split(separator: "\n").map(String.init)
            if let i = text.firstIndex(where: { $0.hasPrefix("processed ") || $0.contains("-- END PROG LOAD LOG --") }), i > 0 {
                return text[i - 1]
            }
            return text.last ?? ""
        }
    }
}
