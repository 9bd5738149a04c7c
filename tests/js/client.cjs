// Drives one JavaScript client's ordinary remote-signer path against a running `clave up --downstream`
// and checks every signature with that client's own verifier. Run by tests/test_client_matrix.py:
//
//   NODE_PATH=<.tools/node_modules> node tests/js/client.cjs '{"client": "ethers"|"viem", "url": ...,
//     "ipc": <path or null>, "account": 0x…, "recipient": 0x…, "chainId": N}'
//
// Prints one JSON object: what each verifier recovered, the hashes of the transactions sent and what
// their receipts say. The Python test compares them with the account and asks anvil about the hashes.
"use strict";

const cfg = JSON.parse(process.argv[2]);
const MESSAGE = "gm from clave ✓";
const DOMAIN = { name: "clave", version: "1", chainId: cfg.chainId, verifyingContract: "0x" + "cc".repeat(20) };
const TYPES = {
  Mail: [
    { name: "from", type: "address" },
    { name: "contents", type: "string" },
    { name: "tags", type: "uint256[]" },
  ],
};
const MAIL = { from: cfg.recipient, contents: "hello ✓", tags: [1n, 2n] };

async function withEthers() {
  const { ethers } = require("ethers");
  const provider = cfg.ipc ? new ethers.IpcSocketProvider(cfg.ipc) : new ethers.JsonRpcProvider(cfg.url);
  try {
    const signer = await provider.getSigner(cfg.account); // eth_chainId, eth_accounts
    const out = { network: Number((await provider.getNetwork()).chainId) };
    out.message = ethers.verifyMessage(MESSAGE, await signer.signMessage(MESSAGE)); // personal_sign
    out.typed = ethers.verifyTypedData(DOMAIN, TYPES, MAIL, await signer.signTypedData(DOMAIN, TYPES, MAIL)); // _v4
    // signTransaction: ethers fills the request from the chain (forwarded to the node), clave signs it.
    const populated = await signer.populateTransaction({ to: cfg.recipient, value: 1n });
    const raw = await signer.signTransaction(populated); // eth_signTransaction: a 0x… string
    const parsed = ethers.Transaction.from(raw);
    out.signed = { from: parsed.from, type: parsed.type, chainId: Number(parsed.chainId) };
    const broadcast = await provider.broadcastTransaction(raw);
    out.signedReceipt = receiptOf(await broadcast.wait());
    // sendTransaction: eth_sendTransaction, clave fills and broadcasts through the node.
    const sent = await signer.sendTransaction({ to: cfg.recipient, value: 2n });
    out.sentReceipt = receiptOf(await sent.wait());
    return out;
  } finally {
    provider.destroy();
  }
}

function receiptOf(r) {
  return { hash: r.hash, from: r.from, status: Number(r.status) };
}

async function withViem() {
  const viem = require("viem");
  const chain = viem.defineChain({
    id: cfg.chainId, name: "clave downstream", nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [cfg.url] } },
  });
  const transport = viem.http(cfg.url);
  const wallet = viem.createWalletClient({ account: cfg.account, chain, transport }); // a JSON-RPC account
  const client = viem.createPublicClient({ chain, transport });
  const out = { network: await wallet.getChainId(), addresses: await wallet.requestAddresses() };
  const signature = await wallet.signMessage({ message: MESSAGE }); // personal_sign
  out.messageValid = await viem.verifyMessage({ address: cfg.account, message: MESSAGE, signature });
  out.message = await viem.recoverMessageAddress({ message: MESSAGE, signature });
  const typed = { domain: DOMAIN, types: TYPES, primaryType: "Mail", message: MAIL };
  const typedSignature = await wallet.signTypedData(typed); // eth_signTypedData_v4
  out.typedValid = await viem.verifyTypedData({ address: cfg.account, signature: typedSignature, ...typed });
  out.typed = await viem.recoverTypedDataAddress({ signature: typedSignature, ...typed });
  out.signed = {};
  for (const type of ["legacy", "eip2930", "eip1559"]) {
    const extra = type === "eip2930" ? { accessList: [{ address: cfg.recipient, storageKeys: ["0x" + "00".repeat(32)] }] } : {};
    const request = await wallet.prepareTransactionRequest({ to: cfg.recipient, value: 3n, type, ...extra });
    const raw = await wallet.signTransaction(request); // eth_signTransaction with an explicit type
    const parsed = viem.parseTransaction(raw);
    const hash = await client.sendRawTransaction({ serializedTransaction: raw });
    const receipt = await client.waitForTransactionReceipt({ hash });
    out.signed[type] = {
      type: parsed.type, accessList: (parsed.accessList || []).length,
      from: await viem.recoverTransactionAddress({ serializedTransaction: raw }),
      receipt: { hash, from: receipt.from, status: receipt.status === "success" ? 1 : 0 },
    };
  }
  const hash = await wallet.sendTransaction({ to: cfg.recipient, value: 4n }); // eth_sendTransaction
  const receipt = await client.waitForTransactionReceipt({ hash });
  out.sentReceipt = { hash, from: receipt.from, status: receipt.status === "success" ? 1 : 0 };
  return out;
}

(cfg.client === "ethers" ? withEthers() : withViem()).then(
  (out) => {
    process.stdout.write(JSON.stringify(out, (k, v) => (typeof v === "bigint" ? v.toString() : v)) + "\n");
    process.exit(0);
  },
  (err) => {
    process.stderr.write(`${cfg.client} failed: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
