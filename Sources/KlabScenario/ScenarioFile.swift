import CYaml
import Glibc
import KlabSystem

/// Reading a scenario file that may be hostile: a scenario comes from users (and later through
/// the daemon's API), so every file is accepted or rejected in bounded time and memory. The
/// limits are stated in lab/SCENARIOS.md ("Limits").
public enum ScenarioFile {
    /// A scenario file's size. The shipped ones are about 2 KB.
    public static let maxBytes = 1 << 20
    /// YAML nodes (scalars, lists, mappings), counting what each alias (*name) stands for
    /// again: a 12-line alias bomb stands for billions of nodes. The shipped scenarios have
    /// at most a few hundred.
    public static let maxNodes = 10_000
    /// Lists and mappings inside one another.
    public static let maxDepth = 64
    /// Hosts of a wire-mode lab (each is a namespace, a thread and a TUN).
    public static let maxHosts = 250
    /// The text of all values, counting what each alias stands for again and after `${NAME}`
    /// substitution: one long value used many times stays bounded too.
    public static let maxTextBytes = 4 << 20

    /// The file's text, read with a bounded read loop after checking that it is a regular file
    /// (a FIFO, a directory or /dev/zero never ends or never starts), then checked to be UTF-8.
    /// The YAML reader and the `.pkt` reader both read through here.
    public static func read(_ path: String) throws(ScenarioError) -> String {
        let top = SourceLocation(file: path, line: 1, column: 1)
        // O_NONBLOCK: opening a FIFO with no writer would wait forever before fstat can say what it is.
        let fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY) }
        guard fd >= 0 else { throw ScenarioError(top, "cannot read scenario file \(path): \(Errno.text(errno))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ScenarioError(top, "cannot read scenario file \(path): \(Errno.text(errno))") }
        let kind: String? = switch st.st_mode & S_IFMT {
        case S_IFREG: nil
        case S_IFDIR: "a directory"
        case S_IFIFO: "a FIFO (named pipe)"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        default: "not a regular file"
        }
        if let kind { throw ScenarioError(top, "\(path) is \(kind): a scenario is a regular file of text (YAML, or packetdrill's .pkt)") }

        var bytes = [UInt8](repeating: 0, count: min(Int(st.st_size), maxBytes) + 1)
        var count = 0
        while count <= maxBytes {
            if count == bytes.count { bytes += [UInt8](repeating: 0, count: min(bytes.count, maxBytes + 1 - count)) }
            let n = bytes.withUnsafeMutableBytes { b in retryingEINTR { Glibc.read(fd, b.baseAddress! + count, b.count - count) } }
            if n < 0 { throw ScenarioError(top, "cannot read scenario file \(path): \(Errno.text(errno))") }
            if n == 0 { break }
            count += n
        }
        if count > maxBytes {
            throw ScenarioError(location(of: maxBytes, in: bytes[...], file: path),
                                "the file is larger than \(maxBytes >> 20) MiB, the limit for a scenario file")
        }
        return try text(bytes[..<count], file: path)
    }

    /// The bytes as a String, or an error naming the first byte that is not UTF-8 text.
    static func text(_ bytes: ArraySlice<UInt8>, file: String) throws(ScenarioError) -> String {
        if bytes.starts(with: [0xFF, 0xFE]) || bytes.starts(with: [0xFE, 0xFF]) {
            throw ScenarioError(SourceLocation(file: file, line: 1, column: 1), "the file is UTF-16 text; scenario files are UTF-8")
        }
        var decoder = UTF8()
        var it = bytes.makeIterator()
        var offset = bytes.startIndex
        while true {
            switch decoder.decode(&it) {
            case .scalarValue(let s) where s.value == 0:
                throw ScenarioError(location(of: offset, in: bytes, file: file), "a NUL byte: this is a binary file, not a scenario (UTF-8 text)")
            case .scalarValue(let s): offset += UTF8.width(s)
            case .emptyInput: return String(decoding: bytes, as: UTF8.self)
            case .error:
                throw ScenarioError(location(of: offset, in: bytes, file: file),
                                    "invalid UTF-8 (byte 0x\(String(bytes[offset], radix: 16, uppercase: true))): a scenario is UTF-8 text")
            }
        }
    }

    /// Line and column of the byte at `offset`, counted as YAML errors count them: columns in
    /// characters, and \n, \r, \r\n, NEL, LS and PS each end a line.
    static func location(of offset: Int, in bytes: ArraySlice<UInt8>, file: String) -> SourceLocation {
        let (line, column) = end(of: String(decoding: bytes[..<offset], as: UTF8.self))
        return SourceLocation(file: file, line: line, column: column)
    }

    /// The line and column just past the end of `text`.
    static func end(of text: String) -> (line: Int, column: Int) {
        var line = 1, column = 1, afterCR = false
        for c in text.unicodeScalars {
            switch c {
            case "\n" where afterCR: break
            case "\n", "\r", "\u{85}", "\u{2028}", "\u{2029}": (line, column) = (line + 1, 1)
            default: column += 1
            }
            afterCR = c == "\r"
        }
        return (line, column)
    }

    /// libyaml places the end of a file that does not end with a line break (where an error
    /// or an empty document is) one line past it: point at the end of the last line instead.
    static func clamped(_ e: ScenarioError, to text: String) -> ScenarioError {
        guard let at = e.location else { return e }
        let (line, column) = end(of: text)
        guard at.line > line else { return e }
        return ScenarioError(SourceLocation(file: at.file, line: line, column: column), e.message)
    }

    /// Walks the YAML events (libyaml, as Yams does, but without building a tree) and rejects
    /// a document past the node or depth limit where it crosses it. Aliases count as the nodes
    /// they stand for, so the tree Yams builds and the reader walks stays small. YAML syntax
    /// errors are left to Yams, which reports them.
    static func checkStructure(_ text: String, file: String) throws(ScenarioError) {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return }
        defer { yaml_parser_delete(&parser) }
        try Array(text.utf8).withUnsafeBufferPointer { (buffer) throws(ScenarioError) in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
            var sizes: [String: Size] = [:]  // what each anchor stands for
            var open: [(anchor: String?, size: Size)] = []  // the lists and mappings around this event
            var total = Size()
            func at(_ m: yaml_mark_t) -> SourceLocation { SourceLocation(file: file, line: m.line + 1, column: m.column + 1) }
            func add(_ size: Size, _ event: yaml_event_t, alias: Bool) throws(ScenarioError) {
                total += size
                if !open.isEmpty { open[open.count - 1].size += size }
                let what = alias ? "with this alias (it stands for \(size.nodes) node\(size.nodes == 1 ? "" : "s"), \(size.bytes) bytes), " : ""
                if total.nodes > maxNodes {
                    throw ScenarioError(at(event.start_mark), "\(what)the document has more than \(maxNodes) YAML nodes, the limit for a scenario")
                }
                if total.bytes > maxTextBytes {
                    throw ScenarioError(at(event.start_mark), "\(what)the document's values pass \(maxTextBytes >> 20) MiB of text, the limit for a scenario")
                }
            }
            func name(_ p: UnsafeMutablePointer<yaml_char_t>?) -> String? { p.map { String(cString: $0) } }
            var event = yaml_event_t()
            while yaml_parser_parse(&parser, &event) == 1 {
                defer { yaml_event_delete(&event) }
                switch event.type {
                case YAML_STREAM_END_EVENT: return
                case YAML_SCALAR_EVENT:
                    let size = Size(nodes: 1, bytes: event.data.scalar.length)
                    try add(size, event, alias: false)
                    if let a = name(event.data.scalar.anchor) { sizes[a] = size }
                case YAML_ALIAS_EVENT:
                    try add(name(event.data.alias.anchor).flatMap { sizes[$0] } ?? Size(nodes: 1), event, alias: true)
                case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                    try add(Size(nodes: 1), event, alias: false)
                    guard open.count < maxDepth else {
                        throw ScenarioError(at(event.start_mark), "lists and mappings nested more than \(maxDepth) deep, the limit for a scenario")
                    }
                    let anchor = event.type == YAML_SEQUENCE_START_EVENT ? event.data.sequence_start.anchor : event.data.mapping_start.anchor
                    open.append((name(anchor), Size(nodes: 1)))
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    let done = open.removeLast()
                    if let a = done.anchor { sizes[a] = done.size }
                    // Its own node was counted in its parent when it opened.
                    if !open.isEmpty { open[open.count - 1].size += Size(nodes: done.size.nodes - 1, bytes: done.size.bytes) }
                default: break
                }
            }
            // libyaml's own nesting limit (1,000) can fire first when it reads far ahead: "[[[[…".
            if parser.error == YAML_PARSER_ERROR, let problem = parser.problem, String(cString: problem).hasPrefix("Maximum nesting level") {
                throw ScenarioError(at(parser.problem_mark), "lists and mappings nested more than \(maxDepth) deep, the limit for a scenario")
            }
        }
    }
}

/// What a YAML node stands for once its aliases are expanded.
private struct Size {
    var nodes = 0, bytes = 0
    static func += (a: inout Size, b: Size) { (a.nodes, a.bytes) = (a.nodes + b.nodes, a.bytes + b.bytes) }
}
