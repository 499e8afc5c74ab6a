// Validates custom resources against validators compiled from their CRDs' OpenAPI schemas
// (@kubernetes-models, pinned in package-lock.json). Reads a JSON array of manifests on stdin;
// prints a JSON array of {kind, name, error} (error null when valid). Used by tests/test_helm.py.
const MODELS = {
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const manifest of JSON.parse(input)) {
  const where = MODELS[manifest.apiVersion];
  const name = manifest.metadata?.name;
  if (!where) {
    results.push({ kind: manifest.kind, name, error: `no CRD schema here for ${manifest.apiVersion}` });
    continue;
  }
  try {
    const model = await import(`${where}/${manifest.kind}`);
    new model[manifest.kind](manifest).validate();
    results.push({ kind: manifest.kind, name, error: null });
  } catch (e) {
    results.push({ kind: manifest.kind, name, error: e.message });
  }
}
console.log(JSON.stringify(results));
