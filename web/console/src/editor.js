// The SQL editor: CodeMirror 6 with SQL highlighting, completion of the server's tables and
// columns, Ctrl/Cmd+Enter to run (the selection alone when there is one).

import { basicSetup } from 'codemirror';
import { sql, PostgreSQL } from '@codemirror/lang-sql';
import { Compartment, EditorState, Prec } from '@codemirror/state';
import { EditorView, keymap, placeholder } from '@codemirror/view';
import { closeCompletion } from '@codemirror/autocomplete';
import { HighlightStyle, syntaxHighlighting } from '@codemirror/language';
import { tags } from '@lezer/highlight';

// Colours come from CSS variables so the editor follows the page's light/dark scheme.
const highlight = HighlightStyle.define([
  { tag: tags.keyword, color: 'var(--syn-keyword)', fontWeight: '600' },
  { tag: [tags.string, tags.special(tags.string)], color: 'var(--syn-string)' },
  { tag: [tags.number, tags.bool, tags.null], color: 'var(--syn-number)' },
  { tag: [tags.lineComment, tags.blockComment], color: 'var(--syn-comment)', fontStyle: 'italic' },
  { tag: [tags.typeName, tags.standard(tags.name)], color: 'var(--syn-type)' },
  { tag: [tags.operator, tags.punctuation], color: 'var(--syn-operator)' },
  { tag: tags.special(tags.name), color: 'var(--syn-name)' },
]);

const theme = EditorView.theme({
  '&': { height: '100%', fontSize: '14px', backgroundColor: 'var(--editor-bg)', color: 'var(--text)' },
  '.cm-scroller': { fontFamily: 'var(--mono)', lineHeight: '1.55' },
  '.cm-content': { caretColor: 'var(--accent)' },
  '.cm-cursor': { borderLeftColor: 'var(--accent)' },
  '.cm-gutters': { backgroundColor: 'var(--editor-gutter)', color: 'var(--muted)', border: 'none' },
  '.cm-activeLine': { backgroundColor: 'var(--editor-active)' },
  '.cm-activeLineGutter': { backgroundColor: 'var(--editor-active)' },
  '&.cm-focused .cm-selectionBackground, .cm-selectionBackground, ::selection': {
    backgroundColor: 'var(--selection) !important',
  },
  '.cm-tooltip': { backgroundColor: 'var(--panel)', border: '1px solid var(--border)', color: 'var(--text)' },
  '.cm-tooltip-autocomplete > ul > li[aria-selected]': { backgroundColor: 'var(--accent)', color: '#fff' },
  '.cm-completionDetail': { color: 'var(--muted)', fontStyle: 'normal', marginLeft: '1em' },
  '.cm-matchingBracket': { backgroundColor: 'var(--selection)', outline: 'none' },
});

/** `{table: [Completion]}` for lang-sql from the `GET /v1/tables` answer. */
export function completionSchema(tables) {
  const schema = {};
  for (const table of tables) {
    schema[table.name] = table.columns.map((c) => ({ label: c.name, type: 'property', detail: c.type }));
  }
  return schema;
}

/**
 * Creates the editor in `parent`. `onRun(sqlText)` is called on Ctrl/Cmd+Enter with the selected
 * text when something is selected, else the whole document; `onChange(docChanged)` after every
 * edit or selection move. Returns the helpers the page uses.
 */
export function createEditor(parent, { doc = '', onRun, onChange = () => {} }) {
  const language = new Compartment();
  const sqlLanguage = (schema) => sql({ dialect: PostgreSQL, schema, upperCaseKeywords: true });
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [
        Prec.highest(
          keymap.of([{ key: 'Mod-Enter', run: () => (closeCompletion(view), onRun(runnableText()), true) }]),
        ),
        basicSetup,
        language.of(sqlLanguage({})),
        syntaxHighlighting(highlight),
        theme,
        placeholder('SELECT … — Ctrl+Enter runs, a selection runs alone'),
        EditorView.lineWrapping,
        EditorView.updateListener.of((update) => {
          if (update.docChanged || update.selectionSet) onChange(update.docChanged);
        }),
        EditorView.contentAttributes.of({ 'aria-label': 'SQL editor', 'data-testid': 'sql-editor' }),
      ],
    }),
  });

  function selectedText() {
    return view.state.selection.ranges
      .filter((r) => !r.empty)
      .map((r) => view.state.sliceDoc(r.from, r.to))
      .join('\n');
  }

  function runnableText() {
    return selectedText().trim() || view.state.doc.toString();
  }

  return {
    view,
    runnableText,
    hasSelection: () => selectedText().trim() !== '',
    getText: () => view.state.doc.toString(),
    setText(text) {
      view.dispatch({
        changes: { from: 0, to: view.state.doc.length, insert: text },
        selection: { anchor: text.length },
      });
    },
    /** Inserts `text` at the cursor (replacing a selection), as the schema panel does on click. */
    insert(text) {
      view.dispatch(view.state.replaceSelection(text));
      view.focus();
    },
    setSchema(tables) {
      view.dispatch({ effects: language.reconfigure(sqlLanguage(completionSchema(tables))) });
    },
    focus: () => view.focus(),
    /** Closes the completion popup, which would otherwise float over the results after a run. */
    closePopups: () => closeCompletion(view),
  };
}
