import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// A client of klab daemon's API over its Unix socket (AsyncHTTPClient's http+unix URLs), or
/// over its loopback TCP listener with a bearer token (klab daemon --listen).
public struct DaemonClient: Sendable {
    public let socket: String
    /// The TCP listener's URL (http://127.0.0.1:PORT), used instead of the socket.
    public let base: String?
    let token: String?
    public static let defaultSocket = "/run/klab/klab.sock"

    /// Where the daemon is, as messages name it.
    public var place: String { base ?? socket }

    /// `--socket`, else KLAB_SOCKET, else /run/klab/klab.sock.
    public static func socketPath(_ option: String?) -> String {
        if let option, !option.isEmpty { return option }
        if let env = ProcessInfo.processInfo.environment["KLAB_SOCKET"], !env.isEmpty { return env }
        return defaultSocket
    }

    public init(socket: String) { (self.socket, self.base, self.token) = (socket, nil, nil) }

    /// Over the TCP listener: every request carries `Authorization: Bearer token`.
    public init(url: String, token: String?) {
        (self.socket, self.base, self.token) = ("", url.hasSuffix("/") ? String(url.dropLast()) : url, token)
    }

    /// What went wrong talking to the daemon, in one line.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        /// The HTTP status, when the daemon answered.
        public let status: Int?
        public init(_ description: String, status: Int? = nil) { (self.description, self.status) = (description, status) }
    }

    /// Connects once before the request, to say exactly why the daemon cannot be reached:
    /// no socket, nobody listening, or not allowed (naming the socket's group).
    public func reachable() throws {
        var st = stat()
        guard stat(socket, &st) == 0 else {
            let e = errno
            if e == EACCES { throw Failure(denied(st: nil)) }
            throw Failure("no klab daemon at \(socket) (\(String(cString: strerror(e)))): start one with `sudo klab daemon`, or give its socket with --socket or KLAB_SOCKET")
        }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure("socket(AF_UNIX): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socket.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw Failure("socket path too long (at most 107 bytes): \(socket)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { for (i, b) in bytes.enumerated() { $0[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc == 0 { return }
        switch errno {
        case EACCES, EPERM: throw Failure(denied(st: st))
        case ECONNREFUSED: throw Failure("no klab daemon answers on \(socket) (the socket file is left from one that stopped): start one with `sudo klab daemon`")
        case let e: throw Failure("cannot connect to \(socket): \(String(cString: strerror(e)))")
        }
    }

    private func denied(st: stat?) -> String {
        let group = st.flatMap { getgrgid($0.st_gid) }.map { String(cString: $0.pointee.gr_name) } ?? "klab"
        return "permission denied on \(socket): only root and members of group '\(group)' may use klab daemon (sudo usermod -aG \(group) $USER, then log in again)"
    }

    public enum Method: Sendable {
        case GET, POST, DELETE
        var nio: HTTPMethod {
            switch self {
            case .GET: .GET
            case .POST: .POST
            case .DELETE: .DELETE
            }
        }
    }

    func url(_ path: String) -> String {
        if let base { return base + path }
        return "http+unix://" + (socket.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? socket) + path
    }

    /// Sends a request; a 4xx or 5xx answer becomes a Failure with the daemon's message.
    public func send(_ method: Method, _ path: String, body: Data? = nil, timeout: TimeAmount? = .seconds(120)) async throws -> HTTPClientResponse {
        if base == nil { try reachable() }
        var request = HTTPClientRequest(url: url(path))
        request.method = method.nio
        if let base {
            guard let token else { throw Failure("klab daemon at \(base) needs its bearer token: give --token-file PATH or set KLAB_TOKEN") }
            request.headers.add(name: "Authorization", value: "Bearer \(token)")
        }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let response: HTTPClientResponse
        do {
            response = try await HTTPClient.shared.execute(request, deadline: timeout.map { .now() + $0 } ?? .distantFuture)
        } catch {
            throw Failure("klab daemon at \(place): \(error)")
        }
        if response.status.code >= 400 {
            let data = Data(try await response.body.collect(upTo: 1 << 20).readableBytesView)
            let message = (try? JSONDecoder().decode(API.Problem.self, from: data).error) ?? String(decoding: data, as: UTF8.self)
            throw Failure(message, status: Int(response.status.code))
        }
        return response
    }

    /// A request whose answer is JSON.
    public func call<T: Decodable>(_ method: Method, _ path: String, _ type: T.Type, body: (some Encodable)? = nil as String?) async throws -> T {
        let data = try body.map { try JSONEncoder().encode($0) }
        let response = try await send(method, path, body: data)
        let bytes = Data(try await response.body.collect(upTo: 64 << 20).readableBytesView)
        do {
            return try JSONDecoder().decode(T.self, from: bytes)
        } catch {
            throw Failure("klab daemon at \(place) answered \(path) with what klab cannot read: \(error)")
        }
    }

    /// A request without a body in the answer (DELETE).
    public func call(_ method: Method, _ path: String) async throws {
        let response = try await send(method, path)
        _ = try await response.body.collect(upTo: 1 << 20)
    }

    /// A GET whose answer is text (a run's log).
    public func text(_ path: String) async throws -> String {
        let response = try await send(.GET, path)
        return String(buffer: try await response.body.collect(upTo: 256 << 20))
    }

    /// Streams the answer's lines (exec): `line` gets each non-empty one as it arrives.
    public func lines(_ path: String, body: some Encodable, _ line: (Data) throws -> Void) async throws {
        let response = try await send(.POST, path, body: try JSONEncoder().encode(body), timeout: nil)
        var pending = Data()
        for try await chunk in response.body {
            pending.append(contentsOf: chunk.readableBytesView)
            while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let l = pending[pending.startIndex..<nl]
                pending = Data(pending[(nl + 1)...])
                if !l.isEmpty { try line(Data(l)) }
            }
        }
        if !pending.isEmpty { try line(pending) }
    }

    /// Reads a stream of server-sent events (GET /labs/{lab}/stream): `message` gets each
    /// one's name and data as it arrives; comment lines are skipped. Returns when the daemon
    /// ends the stream.
    public func events(_ path: String, _ message: (String, Data) throws -> Void) async throws {
        let response = try await send(.GET, path, timeout: nil)
        var pending = Data(), name = "message", data = Data()
        for try await chunk in response.body {
            pending.append(contentsOf: chunk.readableBytesView)
            while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[pending.startIndex..<nl]
                pending = Data(pending[(nl + 1)...])
                if line.isEmpty {
                    if !data.isEmpty { try message(name, data) }
                    (name, data) = ("message", Data())
                } else if line.starts(with: Array("event: ".utf8)) {
                    name = String(decoding: line.dropFirst(7), as: UTF8.self)
                } else if line.starts(with: Array("data: ".utf8)) {
                    data.append(contentsOf: line.dropFirst(6))
                }
            }
        }
    }

    /// Writes the answer's body into `file` as it arrives.
    public func download(_ path: String, to file: String) async throws {
        let response = try await send(.GET, path, timeout: nil)
        _ = FileManager.default.createFile(atPath: file, contents: nil)
        guard let out = FileHandle(forWritingAtPath: file) else { throw Failure("cannot write \(file): \(String(cString: strerror(errno)))") }
        defer { try? out.close() }
        for try await chunk in response.body { out.write(Data(chunk.readableBytesView)) }
    }
}
