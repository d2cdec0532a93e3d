// grpc-echo serve unix:PATH|tcp:PORT        echo server for raw bytes
// grpc-echo bench unix:PATH|tcp:PORT INFLIGHT SECONDS   prints {"callsPerSecond":..,"p50Micros":..,"p99Micros":..}
import EchoLoad
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2

struct RawBytes: MessageSerializer, MessageDeserializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes { Bytes(message) }
    func deserialize<Bytes: GRPCContiguousBytes>(_ bytes: Bytes) throws -> [UInt8] {
        bytes.withUnsafeBytes { Array($0) }
    }
}

let echo = MethodDescriptor(fullyQualifiedService: "bench.Echo", method: "Unary")

struct EchoService: RegistrableRPCService {
    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        router.registerHandler(forMethod: echo, deserializer: RawBytes(), serializer: RawBytes()) { request, _ in
            var messages: [[UInt8]] = []
            for try await m in request.messages { messages.append(m) }
            let echoed = messages
            return StreamingServerResponse { writer in
                try await writer.write(contentsOf: echoed)
                return [:]
            }
        }
    }
}

func serverAddress(_ s: String) -> GRPCNIOTransportCore.SocketAddress {
    s.hasPrefix("unix:") ? .unixDomainSocket(path: String(s.dropFirst(5))) : .ipv4(host: "127.0.0.1", port: Int(s.dropFirst(4))!)
}

func clientTarget(_ s: String) -> any ResolvableTarget {
    s.hasPrefix("unix:") ? .unixDomainSocket(path: String(s.dropFirst(5))) : .ipv4(address: "127.0.0.1", port: Int(s.dropFirst(4))!)
}

let args = CommandLine.arguments
switch args.count > 2 ? args[1] : "" {
case "serve":
    if args[2].hasPrefix("unix:") { unlink(String(args[2].dropFirst(5))) }
    let server = GRPCServer(transport: .http2NIOPosix(address: serverAddress(args[2]), transportSecurity: .plaintext), services: [EchoService()])
    try await server.serve()
case "bench":
    let inflight = Int(args[3])!
    let seconds = Double(args[4])!
    try await withGRPCClient(transport: .http2NIOPosix(target: clientTarget(args[2]), transportSecurity: .plaintext)) { client in
        let payload = [UInt8](repeating: 7, count: 64)
        try await measureAndPrint(inflight: inflight, seconds: seconds) {
            _ = try await client.unary(request: ClientRequest(message: payload), descriptor: echo,
                                       serializer: RawBytes(), deserializer: RawBytes(), options: .defaults) { try $0.message }
        }
    }
default:
    print("usage: grpc-echo serve unix:PATH|tcp:PORT | grpc-echo bench unix:PATH|tcp:PORT INFLIGHT SECONDS")
    exit(2)
}
