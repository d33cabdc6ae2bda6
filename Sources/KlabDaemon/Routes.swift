import Foundation
import Hummingbird
import KlabClient
import KlabScenario
import Logging
import NIOCore

/// The request context: bodies are read by `Routes.decode`, at most API.maxBody bytes.
struct DaemonContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    init(source: Source) { coreContext = .init(source: source) }
    var maxUploadSize: Int { API.maxBody }
}

/// The API (openapi.yaml describes it).
enum Routes {
    static func router(_ state: State) -> Router<DaemonContext> {
        let router = Router(context: DaemonContext.self)
        router.add(middleware: Problems(logger: state.logger))
        router.get("/") { _, _ in try json(state.info) }

        router.get("/labs") { _, _ in try json(state.labList) }
        router.post("/labs") { req, ctx in
            let s = try await decode(API.Submission.self, keys: API.Submission.keys, req, ctx)
            return try json(try await state.createLab(s), status: .created)
        }
        router.get("/labs/:lab") { _, ctx in try json(try state.lab(ctx.parameters.require("lab")).info) }
        router.delete("/labs/:lab") { _, ctx in
            try await state.deleteLab(ctx.parameters.require("lab"))
            return Response(status: .noContent)
        }
        router.get("/labs/:lab/check") { _, ctx in try json(try await state.check(ctx.parameters.require("lab"))) }
        router.get("/labs/:lab/stream") { req, ctx in try await LiveStream.start(req, lab: ctx.parameters.require("lab"), state: state) }
        router.post("/labs/:lab/exec") { req, ctx in
            let entry = try state.lab(ctx.parameters.require("lab"))
            let e = try await decode(API.Exec.self, keys: API.Exec.keys, req, ctx)
            guard !e.argv.isEmpty else { throw DaemonError.bad("argv is empty: give the command and its arguments") }
            return try await Exec.start(e, in: entry, state: state)
        }

        router.get("/runs") { _, _ in try json(state.runList) }
        router.post("/runs") { req, ctx in
            let s = try await decode(API.Submission.self, keys: API.Submission.keys, req, ctx)
            return try json(try state.submitRun(s), status: .accepted)
        }
        router.get("/runs/:run") { _, ctx in try json(try state.run(ctx.parameters.require("run"))) }
        router.delete("/runs/:run") { _, ctx in
            try state.deleteRun(ctx.parameters.require("run"))
            return Response(status: .noContent)
        }
        router.get("/runs/:run/log") { _, ctx in
            let id = try ctx.parameters.require("run")
            _ = try state.run(id)
            let text = (try? Data(contentsOf: URL(fileURLWithPath: "\(state.runFolder(id))/log.txt"))) ?? Data()
            return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(bytes: text)))
        }
        router.get("/runs/:run/results") { _, ctx in
            let id = try ctx.parameters.require("run")
            _ = try state.run(id)
            return try json(Results.list("\(state.runFolder(id))/results"))
        }
        // NAME or DIR/NAME (programs/…).
        router.get("/runs/:run/results/**") { _, ctx in
            try await Results.file(state, ctx.parameters.require("run"), ctx.parameters.getCatchAll().map(String.init), ctx)
        }
        return router
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        var data = try encoder.encode(value)
        data.append(UInt8(ascii: "\n"))
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// Reads a JSON body strictly: whole within API.bodySeconds (else 408), at most
    /// API.maxBody bytes (else 413), an object with only the fields `keys` names (else 400).
    static func decode<T: Decodable & Sendable>(_ type: T.Type, keys: Set<String>, _ req: Request, _ ctx: DaemonContext) async throws -> T {
        let body = req.body
        let buffer: ByteBuffer = try await withThrowingTaskGroup(of: ByteBuffer?.self) { group in
            group.addTask { try await body.collect(upTo: API.maxBody) }
            group.addTask {
                try await Task.sleep(for: .seconds(API.bodySeconds))
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let buffer = first else {
                throw HTTPError(.requestTimeout, message: "the request body did not arrive within \(API.bodySeconds) s")
            }
            return buffer
        }
        let data = Data(buffer.readableBytesView)
        guard let object = try? JSONSerialization.jsonObject(with: data), let fields = object as? [String: Any] else {
            throw DaemonError.bad("the body is not a JSON object")
        }
        let unknown = Set(fields.keys).subtracting(keys)
        if !unknown.isEmpty {
            throw DaemonError.bad("unknown field\(unknown.count > 1 ? "s" : "") \(unknown.sorted().joined(separator: ", ")) (known: \(keys.sorted().joined(separator: ", ")))")
        }
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch let DecodingError.keyNotFound(key, _) {
            throw DaemonError.bad("missing field \(key.stringValue)")
        } catch let DecodingError.typeMismatch(_, c), let DecodingError.valueNotFound(_, c) {
            throw DaemonError.bad("wrong type for \(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)")
        } catch {
            throw DaemonError.bad("bad body: \(error)")
        }
    }
}

/// Every error answers with a JSON body {"error": "..."} and its status: 4xx for the
/// caller's mistakes, 503 while stopping, 500 for the lab's own failures.
struct Problems: RouterMiddleware {
    typealias Context = DaemonContext
    let logger: Logger

    func handle(_ request: Request, context: DaemonContext, next: (Request, DaemonContext) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            let (status, message): (HTTPResponse.Status, String)
            switch error {
            case let e as DaemonError:
                switch e {
                case .bad(let m): (status, message) = (.badRequest, m)
                case .notFound(let m): (status, message) = (.notFound, m)
                case .conflict(let m): (status, message) = (.conflict, m)
                case .unavailable(let m): (status, message) = (.serviceUnavailable, m)
                case .failed(let m): (status, message) = (.internalServerError, m)
                }
            case let e as LiveLab.Refusal: (status, message) = (e.notFound ? .notFound : .badRequest, e.description)
            case let e as HTTPError: (status, message) = (e.status, e.body ?? (e.status == .notFound ? "no such resource: \(request.uri.path)" : e.status.reasonPhrase))
            case let e as HTTPResponseError: (status, message) = (e.status, e.status == .contentTooLarge ? "the body is over \(API.maxBody) bytes" : e.status.reasonPhrase)
            default: (status, message) = (.internalServerError, "\(error)")
            }
            if status.code >= 500 { logger.error("\(request.method) \(request.uri.path): \(message)") }
            return try Routes.json(API.Problem(message), status: status)
        }
    }
}

/// Runs files: listed, and fetched one at a time by a name that stays inside the folder.
enum Results {
    static func list(_ folder: String) -> [API.ResultFile] {
        var out: [API.ResultFile] = []
        func walk(_ dir: String, _ prefix: String) {
            for name in ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() {
                var st = stat()
                guard lstat("\(dir)/\(name)", &st) == 0 else { continue }
                if st.st_mode & S_IFMT == S_IFDIR, prefix.isEmpty { walk("\(dir)/\(name)", name + "/") }
                if st.st_mode & S_IFMT == S_IFREG { out.append(API.ResultFile(path: prefix + name, size: Int(st.st_size))) }
            }
        }
        walk(folder, "")
        return out
    }

    /// 400 for a name with `..`, `/` or a leading dot in a component; 404 when no such
    /// regular file exists.
    static func file(_ state: State, _ run: String, _ parts: [String], _ ctx: DaemonContext) async throws -> Response {
        _ = try state.run(run)
        if parts.isEmpty || parts.count > 2 { throw DaemonError.notFound("no file \(parts.joined(separator: "/")) in the results of \(run)") }
        for p in parts {
            let name = p.removingPercentEncoding ?? p
            if name.isEmpty || name.contains("/") || name.contains("..") || name.hasPrefix(".") || name.contains("\0") {
                throw DaemonError.bad("bad file name '\(name)': a results file is NAME or DIR/NAME, without '..' or '/' in a part")
            }
        }
        let path = "\(state.runFolder(run))/results/" + parts.map { $0.removingPercentEncoding ?? $0 }.joined(separator: "/")
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { throw DaemonError.notFound("no file \(parts.joined(separator: "/")) in the results of \(run)") }
        let body = try await FileIO().loadFile(path: path, context: ctx)
        return Response(status: .ok, headers: [.contentType: "application/octet-stream", .contentLength: "\(st.st_size)"], body: body)
    }
}
